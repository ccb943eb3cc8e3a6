"""The benchmark scripts measure what they claim, on the tiny model (their numbers live in
BENCHMARKS.md, never in assertions here)."""

from __future__ import annotations

import json

import pytest

from benchmarks import common, gpu_check, sweep_efficiency, throughput


def test_write_section_replaces_only_its_own_section(tmp_path, monkeypatch):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- a:start -->\nold a\n<!-- a:end -->\n\n"
                  "<!-- b:start -->\nold b\n<!-- b:end -->\n")
    monkeypatch.setattr(common, "BENCHMARKS_MD", md)
    common.write_section("a", "new a")
    common.write_section("c", "new c")
    text = md.read_text()
    assert "new a" in text and "old a" not in text and "old b" in text
    assert text.index("new a") < text.index("old b") < text.index("new c")


@pytest.mark.parametrize("side", ["harness", "before_eager", "trl_default", "trl_same"])
def test_throughput_sides_train_the_same_model_and_count_real_tokens(side):
    # Uncompiled here (seconds, not minutes); the compiled path: tests/test_pipeline.py.
    r = throughput.measure("tiny_random", side, steps=4, batch=2, overrides=["train.compile=false"])
    assert r["steps"] == 4 and r["tokens"] > 0 and r["tokens_per_s"] > 0  # steady: steps 3-4
    assert r["warmup_s"] > 0 and r["step_s"] > 0
    assert 0 < r["trainable"] < r["total"]  # LoRA on every side
    assert 0 < r["supervised_share"] < 0.5  # the demo rows: the JSON answer is the short part
    assert r["head_params"] == 2048 * 64  # tiny_random: vocabulary x hidden size


def test_gpu_check_reports_what_each_technique_resolves_to():
    rows = {r[0]: r for r in gpu_check.decisions("tiny_random")}
    assert set(rows) == {"full", "lora", "dora", "qlora"}
    for row in rows.values():  # on this CPU: no TF32, deterministic, plain AdamW, the torch loss
        assert row[3:6] == [False, True, "adamw_torch"] and row[8] == "torch"
        assert row[10] == "float32"  # what trains is fp32 (master weights, adapters)


def test_gpu_check_trials_report_their_own_peaks():
    trials = gpu_check.two_trials("tiny_random", steps=2, batch=2)
    assert [t["technique"] for t in trials] == ["full", "lora"]
    for t in trials:
        assert 0 < t["mem/train_peak_gb"] <= t["mem/peak_gb"] and t["mem/eval_peak_gb"] > 0


@pytest.mark.slow
def test_gpu_check_pool_sweep_runs_two_trials_together_on_one_device(monkeypatch, cache_dir):
    """The GPU check's pool sweep on a simulated one-GPU node (the trials train on CPU)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("HARNESS_CACHE", str(cache_dir))
    rows = gpu_check.pool_sweep("tiny_random", steps=2, batch=2)
    assert [r[2:4] for r in rows] == [["0", "COMPLETE"], ["0", "COMPLETE"]]
    assert {r[5] for r in rows} == {"yes"}  # trials_per_device=2: side by side


def test_step_memory_counts_every_tensor_and_the_supervised_loss_needs_less():
    before = throughput.step_memory("tiny_random", 4, before=True)
    after = throughput.step_memory("tiny_random", 4, before=False)
    assert before["tokens"] == after["tokens"] > 0  # the same batch
    assert 0 < after["param_bytes"] == before["param_bytes"] < after["peak_bytes"]
    # the full-logits path holds [4, T, 2048] logits (bf16, then fp32) the other never makes
    assert after["peak_bytes"] < before["peak_bytes"] - 4 * before["tokens"] * 2048


def test_attention_flops_are_half_what_torch_counts_for_full_scores():
    # torch's FLOP counter sees attention only as matmuls (eager attention: every T x T
    # score, forward and backward); the benchmark counts the causal half a flash kernel does.
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.stages.data import token_length

    _, model, tok, splits, *_ = throughput._setup(
        "tiny_random", 1, 1, ["train.compile=false", "model.attn_implementation=sdpa"])
    row = splits.train[0]
    t = token_length(row, tok)
    per_token = throughput.attention_flops_per_token(model, tok, [row], max_length=10**6)
    ids = torch.randint(0, model.config.vocab_size, (1, t))

    def flops() -> int:
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids, labels=ids).loss.backward()
        return sum(counter.get_flop_counts()["Global"].values())

    without_attention = flops()  # SDPA's CPU kernel is not in the counter's table
    model.get_base_model().set_attn_implementation("eager")
    full_scores = flops() - without_attention
    assert full_scores > 0 and per_token * t == pytest.approx(full_scores / 2, rel=1e-9)


def test_matmul_peak_is_a_rate():
    assert throughput.matmul_peak("float32", n=256, reps=2) > 1e6


def test_sweep_summary_counts_pruned_trials_compute(tmp_path):
    def record(name, status, tokens, steps, acc=None):
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        metrics = {"perf/train_tokens": tokens, "train/steps": steps, "cost/train_s": 1.0}
        if acc is not None:
            metrics[sweep_efficiency.OBJECTIVE] = acc
        (folder / "record.json").write_text(json.dumps({"status": status, "metrics": metrics}))

    record("a", "complete", 1000, 32, 2.40)
    record("b", "pruned", 250, 8)
    record("c", "complete", 1000, 32, 2.25)
    s = sweep_efficiency.summarize(tmp_path, wall=10.0)
    assert (s["trials"], s["complete"], s["pruned"]) == (3, 2, 1)
    assert s["tokens"] == 2250 and s["steps"] == 72
    assert s["best"] == pytest.approx(2.25)

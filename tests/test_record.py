"""Config hash stability and sensitivity, record contents, the harness-train command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config.files import atomic_write_text
from harness.trial.record import changes_run, config_hash, deltas, run_command
from tests.conftest import ASSETS, ROOT, compose_config


def cfg_of(*overrides: str, data: Path = ASSETS / "tickets.jsonl"):
    return compose_config(["dataset=local", f"dataset.path={data}", *overrides], Path("/tmp/x"),
                          Path("/tmp/x/cache"))


def test_hash_is_stable_across_spellings_and_unhashed_nodes():
    a = config_hash(cfg_of("optimizer.lr=1e-4"))
    assert a == config_hash(cfg_of("optimizer.lr=0.0001"))
    assert a == config_hash(cfg_of("optimizer.lr=0.0001", "paths.output_dir=/elsewhere",
                                   "logger=tensorboard", "trial.number=7"))
    assert len(a) == 64


def test_full_fine_tuning_carries_no_adapter_options():
    technique = cfg_of("technique=full").technique
    assert set(technique) == {"name", "lr"}
    assert {"r", "alpha", "quant_type"} <= set(cfg_of("technique=qlora").technique)
    assert "quant_type" not in cfg_of("technique=dora").technique


def test_what_is_left_out_of_the_hash_is_left_out_of_the_command():
    overrides = ["technique=dora", "+trial.number=3", "paths.output_dir=/o", "logger=wandb",
                 "hydra.sweep.dir=/s", "optimizer.lr=1e-4", "offline=true"]
    kept = [o for o in overrides if changes_run(o)]
    assert kept == ["technique=dora", "optimizer.lr=1e-4"]
    assert run_command(overrides) == "harness-train technique=dora optimizer.lr=1e-4"
    # and what the command drops does not change the hash
    assert config_hash(cfg_of(*kept)) == config_hash(cfg_of(*kept, "logger=wandb", "offline=true"))


def test_deltas_only_for_scores_the_base_has():
    trained = {"eval/task/acc": 0.5, "eval/task/acc_stderr": 0.1, "eval/mmlu/acc": 0.3,
               "cost/usd": 1.0}
    base = {"eval/task/acc": 0.25, "eval/task/acc_stderr": 0.1, "cost/usd": 0.5}
    assert deltas(trained, base) == {"eval/task/acc_delta": 0.25}


@pytest.mark.parametrize("override", ["optimizer.lr=2e-4", "technique.r=8", "seed=1",
                                      "technique=dora", "train.max_steps=7"])
def test_hash_changes_with_what_changes_the_result(override):
    assert config_hash(cfg_of("optimizer.lr=1e-4")) != config_hash(cfg_of("optimizer.lr=1e-4", override))


@pytest.mark.parametrize(("technique", "lr"), [("lora", 2e-3), ("dora", 2e-3), ("qlora", 2e-3),
                                               ("full", 5e-5)])
def test_default_lr_follows_the_technique(technique, lr):
    """optimizer.lr defaults to the technique's own lr; an explicit lr wins; the hash sees the
    resolved value, so the default and the same lr written out are one run."""
    cfg = cfg_of(f"technique={technique}")
    assert cfg.optimizer.lr == cfg.technique.lr == lr
    assert config_hash(cfg) == config_hash(cfg_of(f"technique={technique}", f"optimizer.lr={lr}"))
    assert cfg_of(f"technique={technique}", "optimizer.lr=3e-4").optimizer.lr == 3e-4
    assert cfg_of(f"technique={technique}", "optimizer=adamw_8bit").optimizer.lr == lr


def test_hash_changes_with_dataset_content(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text((ASSETS / "tickets.jsonl").read_text())
    before = config_hash(cfg_of(data=data))
    data.write_text(data.read_text().replace("Atlas desk", "Atlas chair"))
    assert config_hash(cfg_of(data=data)) != before


def test_hash_is_stable_across_processes():
    code = ("from tests.test_record import cfg_of; from harness.trial.record import config_hash;"
            "print(config_hash(cfg_of('optimizer.lr=1e-4')))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == config_hash(cfg_of("optimizer.lr=1e-4"))


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "record.json"
    atomic_write_text(target, '{"ok": 1}')

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, '{"ok": 2}')
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left


def harness_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "harness.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_cli_run_writes_complete_record_and_skips_rerun(tmp_path):
    args = ["model=tiny_random", "technique=lora", "train.max_steps=3", "eval=smoke",
            f"paths.output_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path.parent / 'cache'}",
            "dataset.demo.n_train=64", "dataset.demo.n_val=8", "dataset.demo.n_test=8"]
    first = harness_train(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    records = list((tmp_path / "out" / "runs").glob("*/record.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["status"] == "complete" and rec["config_hash"] == records[0].parent.name
    assert rec["config"]["technique"]["name"] == "lora"
    m = rec["metrics"]
    for key in ("train/loss", "eval/task/acc", "eval/task/acc_stderr", "eval/mmlu/acc",
                "eval/mmlu/acc_stderr", "eval/perplexity/ppl", "eval/mmlu/acc_delta"):
        assert key in m, key
    for key in ("cost/load_s", "cost/train_s", "cost/eval_s", "cost/device_hours", "cost/usd",
                "perf/tokens_per_s", "perf/train_tokens", "mem/peak_gb", "mem/train_peak_gb",
                "mem/eval_peak_gb", "params/trainable",
                "params/total"):
        assert m[key] > 0, key
    assert rec["env"]["versions"]["torch"] and rec["env"]["device"] == "cpu"
    assert rec["data"]["rows"]["train"] > 0
    assert (records[0].parent / "config.yaml").exists()
    assert (records[0].parent / "adapter" / "adapter_config.json").exists()
    assert "record:" in first.stdout  # the console summary names where the record is
    second = harness_train(*args, cwd=tmp_path)
    assert second.returncode == 0
    assert "cache hit" in second.stderr + second.stdout


@pytest.mark.parametrize(("content", "message"), [
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "a", oops}\n',
     ":2: malformed JSON"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "café", "output": "b"}\n'
     .encode("latin-1"), ":2: not UTF-8 (byte 0xe9 at column 21"),
    (b'{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n',
     ":2: missing field 'output' required by dataset.format=instruction"),
])
def test_cli_bad_data_is_one_clear_line_before_the_model_loads(tmp_path, content, message):
    """Every line is checked before anything loads, with the 8B preset too: no download, no
    model, one line naming file:line."""
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    cache = tmp_path / "cache"
    for model in ("tiny_random", "llama3_8b"):
        out = harness_train(f"model={model}", "dataset=local", f"dataset.path={bad}",
                            "eval=none", f"paths.output_dir={tmp_path}",
                            f"paths.cache_dir={cache}", cwd=tmp_path)
        text = out.stdout + out.stderr
        assert out.returncode == 2 and f"{bad}{message}" in text, text[-2000:]
        assert "Traceback" not in text
        assert not cache.exists()  # nothing was built or downloaded


def test_cli_bad_setting_fails_before_the_model_loads(tmp_path):
    cache = tmp_path / "cache"
    out = harness_train("model=llama3_8b", "cost.device=A1OO", f"paths.output_dir={tmp_path}",
                        f"paths.cache_dir={cache}", cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2 and "cost.device='A1OO' has no price in cost.prices" in text
    assert not cache.exists() and not (tmp_path / "runs").exists()
    assert "Traceback" not in out.stdout + out.stderr

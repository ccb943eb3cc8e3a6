"""Config hash stability and sensitivity, record contents, the harness-train command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.record import atomic_write_text, config_hash
from harness.schema import register_configs

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "tests" / "assets"
register_configs()


def cfg_of(*overrides: str, data: Path = ASSETS / "tickets.jsonl"):
    base = ["model=tiny_random", "dataset=local", f"dataset.path={data}",
            "paths.output_dir=/tmp/x", "paths.root_dir=/tmp", "paths.log_dir=/tmp/x"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[*base, *overrides])


def test_hash_is_stable_across_spellings_and_unhashed_nodes():
    a = config_hash(cfg_of("optimizer.lr=1e-4"))
    assert a == config_hash(cfg_of("optimizer.lr=0.0001"))
    assert a == config_hash(cfg_of("optimizer.lr=0.0001", "paths.output_dir=/elsewhere",
                                   "logger=tensorboard", "trial.number=7"))
    assert len(a) == 64


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
    code = ("from tests.test_record import cfg_of; from harness.record import config_hash;"
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
                "perf/tokens_per_s", "perf/train_tokens", "mem/peak_gb", "params/trainable",
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


def test_cli_bad_input_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", oops}\n')
    out = harness_train("model=tiny_random", "dataset=local", f"dataset.path={bad}",
                        "eval=none", f"paths.output_dir={tmp_path}", cwd=tmp_path)
    assert out.returncode == 2
    assert f"{bad}:2: malformed JSON" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr

"""harness-reproduce: a re-run on this CPU matches its record exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_reproduce_gives_zero_deltas_and_flags_drift(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "out"
    args = ["model=tiny_random", "technique=lora", "train.max_steps=3", "eval=smoke",
            f"paths.output_dir={out}", f"paths.cache_dir={tmp_path.parent / 'cache'}",
            "dataset.demo.n_train=48", "dataset.demo.n_val=8", "dataset.demo.n_test=8"]
    subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=tmp_path, env=env,
                   check=True, capture_output=True)
    folder = next((out / "runs").iterdir())
    cmd = [sys.executable, "-m", "harness.trial.reproduce", folder.name[:10], "--outputs", str(out)]
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "outside tolerance" not in rerun.stdout
    new = json.loads(next((out / "reproduce").glob("*/runs/*/record.json")).read_text())
    old = json.loads((folder / "record.json").read_text())
    assert new["config_hash"] == old["config_hash"]
    assert new["metrics"]["train/loss"] == old["metrics"]["train/loss"]

    # A tampered record: the delta is reported and the exit code is non-zero.
    old["metrics"]["train/loss"] += 0.5
    (folder / "record.json").write_text(json.dumps(old))
    drift = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert drift.returncode == 1
    assert "outside tolerance" in drift.stdout


def test_unknown_hash_is_a_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "harness.trial.reproduce", "deadbeef", "--outputs", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 2
    assert "no run with hash prefix 'deadbeef'" in out.stderr

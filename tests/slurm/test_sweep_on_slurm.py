"""The smoke sweep through a REAL SLURM cluster (started by .ci/slurm/setup.sh): trials run
as SLURM jobs sharing a journal-file study; one job is scancel'ed mid-sweep, its trial ends
FAIL with the SLURM state as the reason, and the sweep completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from .cluster import cancel_all_jobs, running_job_ids, slurm_available

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
SWEEP = "import sys; from harness.cli import sweep_main; sys.argv[0] = 'harness-sweep'; sweep_main()"


def test_smoke_sweep_on_slurm_survives_a_cancelled_job(tmp_path):
    if not slurm_available():
        pytest.skip("no SLURM cluster: bash .ci/slurm/setup.sh")
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    out, journal = tmp_path / "out", tmp_path / "study.log"
    cmd = [sys.executable, "-c", SWEEP, "smoke", f"paths.output_dir={out}",
           "hydra/launcher=slurm_local", f"hydra.sweeper.storage=journal://{journal}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    log = (tmp_path / "sweep.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        victim, deadline = None, time.time() + 300
        while victim is None and time.time() < deadline and proc.poll() is None:
            jobs = running_job_ids()
            victim = jobs[0] if jobs else None
            time.sleep(0.5)
        assert victim, "no SLURM job started:\n" + (tmp_path / "sweep.log").read_text()[-3000:]
        time.sleep(3)  # let it import and start its record
        subprocess.run(["scancel", victim], check=True)
        assert proc.wait(timeout=1200) == 0, (tmp_path / "sweep.log").read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        cancel_all_jobs()

    study = optuna.load_study(study_name="smoke",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    states = Counter(t.state.name for t in study.trials)
    assert states["FAIL"] >= 1, states
    reasons = [t.user_attrs.get("error", "") for t in study.trials if t.state.name == "FAIL"]
    assert any("CANCELLED" in r for r in reasons), reasons
    assert states["COMPLETE"] + states["PRUNED"] == 6, states  # n_trials counts finished ones
    records = [json.loads(p.read_text()) for p in (out / "runs").glob("*/record.json")]
    assert Counter(r["status"] for r in records)["complete"] == states["COMPLETE"]
    assert all(r["status"] in ("complete", "pruned", "failed") for r in records)
    assert (out / "sweeps" / "smoke" / "study.csv").exists()


def test_async_workers_on_slurm_survive_a_cancelled_worker(tmp_path):
    """hydra.sweeper.workers=2: two SLURM jobs pull trials from the journal study; one is
    scancel'ed while it trains; its trial ends FAIL with the SLURM state, is enqueued again
    and the sweep still finishes its budget."""
    if not slurm_available():
        pytest.skip("no SLURM cluster: bash .ci/slurm/setup.sh")
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    out, journal = tmp_path / "out", tmp_path / "study.log"
    cmd = [sys.executable, "-c", SWEEP, "smoke", f"paths.output_dir={out}",
           "hydra/launcher=slurm_local", f"hydra.sweeper.storage=journal://{journal}",
           "hydra.sweeper.workers=2", "hydra.sweeper.pruner.name=none",
           "hydra.sweeper.n_trials=4", "train.max_steps=6"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HARNESS_HEARTBEAT_S": "2"}
    log_path = tmp_path / "sweep.log"
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, env=env,
                            cwd=tmp_path)
    beats = out / "sweeps" / "smoke" / ".workers"
    try:
        victim, deadline = None, time.time() + 400
        while victim is None and time.time() < deadline and proc.poll() is None:
            running = {r["env"]["pid"] for r in _records(out) if r["status"] == "running"}
            workers = [json.loads(p.read_text()) for p in beats.glob("*.json")] \
                if beats.exists() else []
            victim = next((w["slurm_job"] for w in workers if w["pid"] in running), None)
            time.sleep(0.5)
        assert victim, "no worker started a trial:\n" + log_path.read_text()[-3000:]
        subprocess.run(["scancel", victim], check=True)
        assert proc.wait(timeout=1200) == 0, log_path.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        cancel_all_jobs()

    study = optuna.load_study(study_name="smoke",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1, [(t.number, t.state.name) for t in study.trials]
    reason = failed[0].user_attrs["error"]
    assert victim in reason and "CANCELLED" in reason, reason
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 4
    assert {t.user_attrs["worker"]["slurm_job"] for t in study.trials} >= {victim}
    assert failed[0].params in [t.params for t in complete]  # enqueued again, finished
    records = _records(out)
    assert all(r["status"] in ("complete", "failed") for r in records)


def _records(out):
    runs = out / "runs"
    found = []
    for p in runs.glob("*/record.json") if runs.exists() else []:
        try:
            found.append(json.loads(p.read_text()))
        except ValueError:  # being rewritten
            continue
    return found


def test_a_two_task_trial_on_slurm_trains_with_ddp(tmp_path):
    """hydra.launcher.tasks_per_node=2: SLURM starts the trial twice (srun), the tasks meet
    at the rendezvous their job's environment gives (gloo on this CPU node) and train one
    DDP trial; rank 0 alone writes its complete record."""
    if not slurm_available():
        pytest.skip("no SLURM cluster: bash .ci/slurm/setup.sh")
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", SWEEP, "smoke", f"paths.output_dir={out}",
           "hydra/launcher=slurm_local", "hydra.launcher.tasks_per_node=2",
           "hydra.sweeper.n_trials=1", "hydra.sweeper.pruner.name=none",
           "train.max_steps=6", "train.group_by_length=false"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=900)
    finally:
        cancel_all_jobs()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (record,) = _records(out)
    assert record["status"] == "complete", record.get("error")
    assert record["env"]["world_size"] == 2 and record["env"]["distributed"] == "auto"
    assert record["metrics"]["train/steps"] == 6
    logs = sorted(p.name for p in (out / "sweeps" / "smoke" / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, logs  # one per task

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

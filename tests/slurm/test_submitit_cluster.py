"""submitit against the real local SLURM cluster: side-by-side jobs, cancel and crash detection.

Needs `bash .ci/slurm/setup.sh` (root, Debian); skipped when no cluster answers.
"""

from __future__ import annotations

import os
import time

import pytest

from .cluster import (
    cancel_all_jobs,
    running_job_ids,
    sacct_state,
    slurm_available,
    wait_for_job_state,
)

submitit = pytest.importorskip("submitit")

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(not slurm_available(), reason="no local SLURM cluster (.ci/slurm/setup.sh)"),
]


@pytest.fixture
def executor(tmp_path):
    ex = submitit.SlurmExecutor(folder=tmp_path / "submitit" / "%j")
    ex.update_parameters(time=5, cpus_per_task=1, mem="500M", partition="debug")
    yield ex
    cancel_all_jobs()


def _force_state(job) -> str:
    job.watcher.update()  # one sacct call now instead of submitit's backoff schedule
    return job.state


def test_two_jobs_side_by_side_cancel_and_complete(executor):
    def sleep_then(seconds: float, value: int) -> int:
        time.sleep(seconds)
        return value

    keep = executor.submit(sleep_then, 8, 42)
    doomed = executor.submit(sleep_then, 600, 0)
    wait_for_job_state(keep.job_id, "RUNNING", timeout=30, source="squeue")
    wait_for_job_state(doomed.job_id, "RUNNING", timeout=30, source="squeue")
    running = running_job_ids()
    assert keep.job_id in running and doomed.job_id in running, running

    doomed.cancel()  # scancel
    assert wait_for_job_state(doomed.job_id, "CANCELLED", timeout=30, source="sacct")
    assert _force_state(doomed).startswith("CANCELLED")
    t0 = time.monotonic()
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        doomed.result()
    # submitit waits _results_timeout_s (15 s) for a result file once the job is done
    assert time.monotonic() - t0 < 30

    assert keep.result() == 42
    assert sacct_state(keep.job_id) == "COMPLETED"


def test_job_dying_without_result_is_failed(executor):
    job = executor.submit(os._exit, 1)
    assert wait_for_job_state(job.job_id, "FAILED", timeout=60, source="sacct") == "FAILED"
    assert _force_state(job) == "FAILED"
    t0 = time.monotonic()
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
    assert time.monotonic() - t0 < 30

"""Helpers for tests that need the local SLURM cluster of `.ci/slurm/setup.sh`.

    from slurm.cluster import slurm_available, wait_for_job_state   # tests/ on sys.path
    pytestmark = pytest.mark.skipif(not slurm_available(), reason="no local SLURM cluster")

Every function shells out to the SLURM client tools (squeue, sacct, scancel, scontrol) with a
timeout, so a dead daemon makes a test fail instead of hang. Job ids are strings as submitit
gives them ("123", or "123_4" for an array element).

When /etc/slurm/slurm.conf is absent but the setup script's state dir has a config,
`slurm_available()` exports SLURM_CONF into os.environ, so submitit (which runs sbatch/sacct
as subprocesses) finds the cluster too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

STATE_DIR = Path(os.environ.get("HARNESS_SLURM_STATE", "/tmp/harness-slurm"))
REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / ".ci" / "slurm" / "setup.sh"
TEARDOWN_SCRIPT = REPO_ROOT / ".ci" / "slurm" / "teardown.sh"

# squeue/sacct states after which a job never runs again
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)

_CLIENTS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo")


def _run(args: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _ensure_slurm_conf() -> None:
    if os.environ.get("SLURM_CONF") or Path("/etc/slurm/slurm.conf").exists():
        return
    conf = STATE_DIR / "etc" / "slurm.conf"
    if conf.exists():
        os.environ["SLURM_CONF"] = str(conf)


def slurm_available() -> bool:
    """True when a controller answers, a node can run jobs and accounting (sacct) works.

    Cheap (~0.1 s): call it at import time for skipif markers.
    """
    if any(shutil.which(c) is None for c in _CLIENTS):
        return False
    _ensure_slurm_conf()
    try:
        if _run(["scontrol", "ping"], timeout=10).returncode != 0:
            return False
        nodes = _run(["sinfo", "-h", "-o", "%T"], timeout=10)
        if nodes.returncode != 0 or not any(
            s.rstrip("*~#$@+").lower() in {"idle", "mixed", "allocated", "completing"}
            for s in nodes.stdout.split()
        ):
            return False
        return _run(["sacct", "-n", "-X", "-S", "now-1minute"], timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def squeue_state(job_id: str) -> str | None:
    """State as the controller sees it (PENDING, RUNNING, COMPLETING, ...); None once it has
    forgotten the job (MinJobAge after the end) or when it never existed."""
    out = _run(["squeue", "-h", "-j", str(job_id), "-o", "%T"])
    if out.returncode != 0:
        return None
    states = out.stdout.split()
    return states[0] if states else None


def sacct_state(job_id: str) -> str | None:
    """State of the job allocation in the accounting database (what submitit reads), first
    word only ("CANCELLED by 0" -> "CANCELLED"); None when sacct has no row yet."""
    out = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "JobID,State"])
    if out.returncode != 0:
        return None
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid == str(job_id) and state:
            return state.split()[0]
    return None


def job_state(job_id: str) -> str | None:
    """sacct's state, falling back to squeue while accounting has no row yet."""
    return sacct_state(job_id) or squeue_state(job_id)


def wait_for_job_state(
    job_id: str,
    states: str | Iterable[str],
    timeout: float = 60.0,
    poll: float = 0.25,
    source: str = "any",
) -> str:
    """Poll until the job's state is one of `states`; return it.

    source: "sacct" (accounting only), "squeue" (controller only) or "any" (either).
    Raises TimeoutError (with the last state seen) after `timeout` seconds, and
    RuntimeError when the job reaches a terminal state that is not among `states`.
    """
    wanted = {states} if isinstance(states, str) else set(states)
    getters = {
        "sacct": (sacct_state,),
        "squeue": (squeue_state,),
        "any": (squeue_state, sacct_state),
    }[source]
    deadline = time.monotonic() + timeout
    last: list[str | None] = []
    while True:
        last = [g(job_id) for g in getters]
        for state in last:
            if state in wanted:
                return state
        # a finished job never comes back; sacct is authoritative for the end state
        final = sacct_state(job_id) if source != "squeue" else None
        if final in TERMINAL_STATES and final not in wanted:
            raise RuntimeError(f"job {job_id} ended {final}, wanted {sorted(wanted)}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id}: still {last} after {timeout}s, wanted {sorted(wanted)}"
            )
        time.sleep(poll)


def running_job_ids() -> list[str]:
    """Ids of the jobs squeue lists as RUNNING (all users)."""
    out = _run(["squeue", "-h", "-t", "RUNNING", "-o", "%i"])
    return out.stdout.split() if out.returncode == 0 else []


def cancel_all_jobs(timeout: float = 30.0) -> None:
    """scancel every queued or running job and wait until squeue lists none."""
    ids = _run(["squeue", "-h", "-o", "%A"]).stdout.split()
    if ids:
        _run(["scancel", *ids])
    deadline = time.monotonic() + timeout
    while _run(["squeue", "-h", "-o", "%A"]).stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError("jobs still queued after scancel")
        time.sleep(0.25)

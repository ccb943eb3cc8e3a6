"""The device pool: every GPU of one node busy during a sweep, each trial on its own devices.

On a local multi-GPU node, Hydra's launchers start every trial with every GPU visible (each
loads onto cuda:0) and in batches. With `hydra.sweeper.devices_per_trial=k` the sweeper
instead splits the node's GPUs (CUDA_VISIBLE_DEVICES, else every GPU torch sees) into groups
of k consecutive devices and keeps a trial running on each group:

    while a group is free and budget is left:
        ask a trial -> same run as a running trial? it waits for that one's outcome
                    -> cache hit? tell the recorded values
                    -> else take a group and start the trial on it
    wait for the first trial to end -> give its group back -> tell what its record says

Asynchronous, not in batches: the group of a short trial takes the next trial while the
others still run. Only the sweeper's main thread talks to Optuna (ask, tell, user attributes);
one thread per slot waits for its trial's process. A trial is a fresh process because CUDA
reads CUDA_VISIBLE_DEVICES once, when it initializes: `python -m harness.cli` for k = 1,
`torchrun --standalone --nproc_per_node=k -m harness.cli` for k > 1 (DDP; the trial handles
its ranks, harness.stages.distributed). Its output goes to `<sweep dir>/trial_<n>/trial.log`;
as with any launcher, the trial's record says how it ended.

With hydra/launcher=slurm there is no pool: SLURM gives each job its own GPUs, and
`slurm_resources` asks for them: k tasks sharing k GPUs per trial job (srun starts the k
ranks, each takes the GPU of its local rank), or for asynchronous workers
(hydra.sweeper.workers) one task with k GPUs per worker job, whose trials then run through
`spawn_trial` (harness.sweep.workers).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from harness.config.errors import ConfigError
from harness.sweep import study as study_lib
from harness.sweep.engine import Engine, JobEnd, Pending
from harness.sweep.space import Param, format_value
from harness.sweep.study import Outcome

log = logging.getLogger(__name__)

Start = Callable[[list[str], tuple[str, ...]], JobEnd]
TAIL_LINES = 5  # of a failed trial's log, in its error


def visible_devices(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The node's GPUs: CUDA_VISIBLE_DEVICES when set (empty: none), else all torch sees."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        return [d.strip() for d in value.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _source(environ: Mapping[str, str] = os.environ) -> str:
    value = environ.get("CUDA_VISIBLE_DEVICES")
    return ("CUDA_VISIBLE_DEVICES unset: the GPUs torch sees" if value is None
            else f"CUDA_VISIBLE_DEVICES={value}")


class DevicePool:
    """The GPUs in groups of `per_trial` consecutive devices, each group lent to up to
    `trials_per_device` trials at once. Used by one thread only (run_pool's)."""

    def __init__(self, devices: list[str], per_trial: int, trials_per_device: int = 1,
                 source: str | None = None):
        devices, k, where = [str(d) for d in devices], int(per_trial), source or _source()
        if k < 1:
            raise ConfigError(f"hydra.sweeper.devices_per_trial={k}: the number of GPUs each "
                              "trial gets, at least 1 (0 turns the device pool off)")
        if trials_per_device < 1:
            raise ConfigError(f"hydra.sweeper.trials_per_device={trials_per_device}: at least 1 "
                              "(more only to share each GPU between that many trials)")
        if not devices:
            raise ConfigError(f"hydra.sweeper.devices_per_trial={k} but this node shows no "
                              f"GPUs ({where})")
        if k > len(devices):
            raise ConfigError(f"hydra.sweeper.devices_per_trial={k} but this node shows "
                              f"{len(devices)} GPUs ({where})")
        self.groups = [tuple(devices[i:i + k]) for i in range(0, len(devices) - k + 1, k)]
        self.trials_per_device = trials_per_device
        self._lent = dict.fromkeys(self.groups, 0)
        unused = devices[len(self.groups) * k:]
        if unused:
            log.warning("devices %s stay unused: %d GPUs make %d groups of "
                        "hydra.sweeper.devices_per_trial=%d", ",".join(unused), len(devices),
                        len(self.groups), k)

    @property
    def slots(self) -> int:
        return len(self.groups) * self.trials_per_device

    @property
    def free(self) -> int:
        return self.slots - sum(self._lent.values())

    def take(self) -> tuple[str, ...] | None:
        """The least shared group with room for one more trial; None when every slot is lent."""
        open_groups = [g for g in self.groups if self._lent[g] < self.trials_per_device]
        if not open_groups:
            return None
        group = min(open_groups, key=self._lent.__getitem__)
        self._lent[group] += 1
        return group

    def give(self, group: tuple[str, ...]) -> None:
        if not self._lent.get(group):
            raise ValueError(f"devices {group} were not lent out")
        self._lent[group] -= 1


# -- the scheduler ----------------------------------------------------------------------------
def run_pool(engine: Engine, space: list[Param], passthrough: list[str], n_trials: int,
             pool: DevicePool, start: Start) -> None:
    """Keeps a trial running on every free slot of `pool` until n_trials are counted (the
    module docstring). `start(job_overrides, devices)` runs one trial, in a worker thread."""
    allowed, failures = engine.allowed_failures(n_trials), 0
    running: dict[Future, tuple[Pending, tuple[str, ...]]] = {}
    copies: dict[str, list[Pending]] = {}  # config hash -> later trials of that running run
    with ThreadPoolExecutor(max_workers=pool.slots, thread_name_prefix="harness-trial") as threads:
        try:
            while True:
                if failures <= allowed:  # beyond: no new trial, the running ones finish
                    _fill(engine, space, passthrough, n_trials, pool, start, threads, running,
                          copies)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f][0].trial.number):
                    failures += _finish(engine, pool, *running.pop(future), future, copies)
        except Exception:  # tell the trials still running before the error stops the sweep
            for future in list(running):
                try:
                    _finish(engine, pool, *running.pop(future), future, copies)
                except Exception as exc:
                    log.warning("while stopping: %s: %s", type(exc).__name__, exc)
            raise
    if failures > allowed:
        engine.stop_for_failures(failures, n_trials)


def _fill(engine: Engine, space, passthrough, n_trials: int, pool: DevicePool, start: Start,
          threads: ThreadPoolExecutor, running: dict, copies: dict) -> None:
    """Asks trials while a slot is free and budget is left. Asked trials are RUNNING, which
    n_counted counts, so this never asks beyond n_trials."""
    while pool.free and n_trials - study_lib.n_counted(engine.study) > 0:
        p = engine.ask(space, passthrough)
        first = next((q for q, _ in running.values() if q.chash == p.chash), None)
        if first is not None:  # checked before the cache: its record is `running`, in use
            copies.setdefault(p.chash, []).append(p)
            log.info("trial %d [%s]: same run as trial %d, waiting for it", p.trial.number,
                     p.chash[:12], first.trial.number)
            continue
        if engine.tell_if_cached(p):
            continue
        group = pool.take()
        p.trial.set_user_attr("devices", list(group))
        log.info("trial %d [%s] on devices %s", p.trial.number, p.chash[:12], ",".join(group))
        running[threads.submit(start, p.job_overrides, group)] = (p, group)


def _finish(engine: Engine, pool: DevicePool, p: Pending, group: tuple[str, ...],
            future: Future, copies: dict) -> int:
    """Frees the trial's devices, tells its outcome (and its copies'); returns the failures."""
    pool.give(group)
    try:
        end = future.result()
    except Exception as exc:  # the process could not start or be waited for: the trial failed
        end = JobEnd(error=f"{type(exc).__name__}: {exc}")
    outcome = engine.settle(p, end)
    engine.tell(p, outcome)
    failed = outcome.state == TrialState.FAIL
    for q in copies.pop(p.chash, []):
        q.trial.set_user_attr("duplicate_of", p.trial.number)
        engine.tell(q, Outcome(outcome.state, outcome.values, outcome.reason, outcome.step),
                    f"same run as trial {p.trial.number}")
        failed += outcome.state == TrialState.FAIL
    return int(failed)


# -- one trial as a process -------------------------------------------------------------------
def trial_command(overrides: list[str], n_devices: int, config_name: str) -> list[str]:
    """`harness-train` on one device, or under torchrun with one process per device."""
    cli = ["-m", "harness.cli", "--config-name", config_name, *overrides]
    if n_devices <= 1:
        return [sys.executable, *cli]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={n_devices}", *cli]


def run_overrides(job_overrides: list[str], sweep_dir: str | Path) -> tuple[list[str], Path]:
    """The engine's job overrides for a single run: hydra.sweep.dir and .subdir (multirun
    keys) become hydra.run.dir=<sweep_dir>/<subdir>. Returns the overrides and that folder."""
    keys = ("hydra.sweep.dir=", "hydra.sweep.subdir=")
    subdir = next((o.split("=", 1)[1] for o in job_overrides if o.startswith(keys[1])), "trial")
    folder = Path(sweep_dir) / subdir
    kept = [o for o in job_overrides if not o.startswith(keys)]
    return [*kept, f"hydra.run.dir={format_value(str(folder))}"], folder


def spawn_trial(job_overrides: list[str], devices: tuple[str, ...], config_name: str,
                sweep_dir: str | Path) -> JobEnd:
    """Runs one trial as a fresh process that sees only `devices`; its output goes to
    <sweep_dir>/trial_<n>/trial.log. A non-zero exit is the JobEnd's error."""
    overrides, folder = run_overrides(job_overrides, sweep_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "trial.log"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(devices)}
    with path.open("w") as out:
        code = subprocess.run(trial_command(overrides, len(devices), config_name),
                              stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              env=env, check=False).returncode
    if code == 0:
        return JobEnd()
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    tail = " | ".join(lines[-TAIL_LINES:])[-1000:] or "no output"
    return JobEnd(error=f"exit code {code} ({tail}; log: {path})")


# -- SLURM ------------------------------------------------------------------------------------
SLURM_LAUNCHER = "SlurmLauncher"  # hydra_submitit_launcher's class; slurm_local is one too


def is_slurm(launcher_target: str) -> bool:
    return str(launcher_target).rsplit(".", 1)[-1] == SLURM_LAUNCHER


def slurm_resources(devices_per_trial: int, workers: int, launcher: Mapping[str, Any],
                    user_set: Collection[str] = ()) -> dict[str, Any]:
    """The hydra.launcher values (only those to change) that give each SLURM job its k GPUs.

    A trial job: k tasks (its ranks) on k GPUs of a node, every task seeing all k: the trainer
    (accelerate) puts rank r on cuda:LOCAL_RANK, which a task bound to one GPU would not have.
    An asynchronous worker job (workers > 0): one task with the k GPUs, which it hands to each
    trial it runs. Values the user set (`user_set`: named in hydra.overrides.hydra) are kept,
    and must give the same: an error otherwise. `nodes` multiplies the ranks of a trial.
    """
    k = int(devices_per_trial)
    if k < 0:
        raise ConfigError(f"hydra.sweeper.devices_per_trial={k}: the number of GPUs each trial "
                          "gets, at least 1 (0: off)")
    if k == 0:
        return {}
    tasks = 1 if workers > 0 else k
    wanted = {"tasks_per_node": tasks, "gpus_per_node": k, "gpus_per_task": None}
    theirs = {key: launcher.get(key) for key in wanted if key in user_set}
    final = {**wanted, **theirs}
    if final != wanted:
        job = (f"worker job (hydra.sweeper.workers={workers}): one task with {k} GPUs"
               if workers > 0 else f"trial job: {k} tasks (ranks) sharing {k} GPUs")
        said = ", ".join(f"hydra.launcher.{key}={format_value(v)}" for key, v in theirs.items())
        raise ConfigError(f"hydra.sweeper.devices_per_trial={k} needs, per {job}, "
                          f"tasks_per_node={tasks} gpus_per_node={k} gpus_per_task=null; but "
                          f"{said} differ: leave them unset or make them agree")
    return {key: value for key, value in final.items() if launcher.get(key) != value}

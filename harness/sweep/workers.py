"""Asynchronous sweeps: N worker jobs pull trials from the shared study until the budget is spent.

Hydra launchers block per batch: with `n_jobs=8` on SLURM, seven GPUs wait for the slowest
trial of the batch before the next batch is asked for. With `hydra.sweeper.workers=N` the
sweeper instead launches N long-lived worker jobs (one SLURM job each through
`hydra/launcher=slurm`) and waits for them. Each worker runs Optuna's distributed pattern:

    while the study has fewer than n_trials finished or running trials:
        ask a trial -> compose its config -> cache hit? tell the recorded values
                    -> otherwise train + evaluate it here -> tell what its record says

With `hydra.sweeper.devices_per_trial=k > 1` a worker job is one task with k GPUs, and "here"
is a torchrun process on them (harness.sweep.pool.spawn_trial): DDP needs one process a GPU.

Everything a worker needs (the sweeper's settings, the command's overrides, the sweep folder)
is stored in the study itself (`study.user_attrs["harness_workers:<invocation>"]`), so a
worker only needs the storage URL and the invocation id, which reach it as `trial.*`
overrides. When the workers have ended, the sweeper marks trials they left RUNNING (a worker
that was scancel'ed, hit its time limit or lost its node) FAIL with the launcher's reason,
enqueues their parameters again (the run resumes from its last checkpoint) and starts another
round of workers while budget is left, up to `max_failure_rate`.

The budget check is not atomic: two workers that ask at the same moment for the last slot
both get a trial, so a study can end with up to `workers - 1` trials more than n_trials.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict, read_write

from harness.config.errors import ConfigError
from harness.sweep import study as study_lib
from harness.sweep.engine import Engine, JobEnd, Launch, Pending, settings_from

log = logging.getLogger(__name__)

ATTR = "harness_workers"
# A worker rewrites <sweep dir>/.workers/<invocation>-<index>.json every HEARTBEAT_S seconds;
# one whose file has not changed for STALE_BEATS beats (by the sweeper's own clock: no clock
# skew between nodes) is dead, and the trial it left RUNNING is failed.
HEARTBEAT_S = float(os.environ.get("HARNESS_HEARTBEAT_S", "15"))
STALE_BEATS = 4


def _spec_key(invocation: str) -> str:
    return f"{ATTR}:{invocation}"


def _ours(study, invocation: str, states: tuple) -> list:
    return [t for t in study.get_trials(deepcopy=False, states=states)
            if t.user_attrs.get("invocation") == invocation]


# -- the sweeper's side ---------------------------------------------------------------------
def run_workers(engine: Engine, arguments: list[str], passthrough: list[str], n_trials: int,
                launch: Launch) -> None:
    """Launches rounds of `settings.workers` worker jobs until n_trials are counted."""
    from optuna.trial import TrialState

    from harness.sweep.space import format_value

    study, settings = engine.study, engine.settings
    invocation = uuid.uuid4().hex[:12]
    study.set_user_attr(_spec_key(invocation), {
        "settings": {**asdict(settings), "enqueue": []}, "arguments": list(arguments),
        "n_trials": n_trials, "storage": engine.storage_url, "sweep_dir": str(engine.sweep_dir),
        "output_dir": engine.output_dir,
        "trials_at_start": len(study.trials),  # the workers' seed base: not their start order
    })
    allowed = engine.allowed_failures(n_trials)
    first_job = 0
    while (todo := n_trials - study_lib.n_counted(study)) > 0:
        n = min(settings.workers, todo)
        fmt = format_value
        jobs = [[*passthrough, f"trial.study_name={fmt(study.study_name)}",
                 f"trial.storage={fmt(engine.storage_url)}", f"trial.worker={first_job + i}",
                 f"trial.invocation={invocation}",
                 f"hydra.sweep.dir={fmt(str(engine.sweep_dir))}",
                 f"hydra.sweep.subdir=worker_{first_job + i}"] for i in range(n)]
        log.info("asynchronous mode: %d worker job(s) for the %d trial(s) left (invocation %s)",
                 n, todo, invocation)
        finished_before = _n_finished(study)
        errors, raised = _launch(launch, jobs, first_job)
        # submitit raises as soon as one job is found dead while the others may still run:
        # then only trials of workers that are really gone are failed
        workers = range(first_job, first_job + n)
        for t in _wait_for_workers(study, invocation, engine.sweep_dir, workers, wait=raised):
            _fail_orphan(study, t, errors, engine.output_dir)
        first_job += n
        failures = len(_ours(study, invocation, (TrialState.FAIL,)))
        if failures > allowed:
            engine.stop_for_failures(failures, n_trials)
        if _n_finished(study) == finished_before:
            raise ConfigError(
                "asynchronous mode: a round of workers finished no trial; their logs are in "
                f"{engine.sweep_dir}/worker_*/ and the launcher said: "
                f"{'; '.join(errors.values()) or 'nothing'}")


def _n_finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def _heartbeat_path(sweep_dir: str | Path, invocation: str, index: int) -> Path:
    return Path(sweep_dir) / ".workers" / f"{invocation}-{index}.json"


def _wait_for_workers(study, invocation: str, sweep_dir: Path, indices: range,
                      wait: bool) -> list:
    """Waits until every worker of the round is done or dead; returns the RUNNING trials that
    dead workers left behind. wait=False: the launcher saw every job end, none is live."""
    from optuna.trial import TrialState

    seen: dict[int, tuple[str | None, float]] = {}  # index -> (file content, when it changed)
    while True:
        now, live, dead = time.monotonic(), [], set()
        for i in indices:
            try:
                text = _heartbeat_path(sweep_dir, invocation, i).read_text()
            except OSError:
                text = None
            if text is not None and json.loads(text).get("done"):
                continue
            if i not in seen or seen[i][0] != text:
                seen[i] = (text, now)
            if not wait or now - seen[i][1] > STALE_BEATS * HEARTBEAT_S:
                dead.add(i)  # stopped beating, or never started after the launcher returned
            else:
                live.append(i)
        if not live:
            break
        time.sleep(min(HEARTBEAT_S, 5.0))
    return [t for t in _ours(study, invocation, (TrialState.RUNNING,))
            if (t.user_attrs.get("worker") or {}).get("index") in dead]


class _Heartbeat:
    """Rewrites the worker's heartbeat file every HEARTBEAT_S seconds until stopped."""

    def __init__(self, path: Path, info: dict):
        self.path, self.info, self.beat = path, info, 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="harness-heartbeat")

    def _write(self, done: bool) -> None:
        from harness.config.files import atomic_write_text

        self.beat += 1
        atomic_write_text(self.path, json.dumps({**self.info, "beat": self.beat, "done": done}))

    def _loop(self) -> None:
        while not self.stop_event.wait(HEARTBEAT_S):
            try:
                self._write(False)
            except OSError as exc:  # a full or flaky shared disk must not kill the trial
                log.warning("heartbeat %s: %s", self.path, exc)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(False)
        self.thread.start()
        return self

    def __exit__(self, exc_type, *exc_info):
        self.stop_event.set()
        self.thread.join()
        self._write(done=exc_type is None)  # not done: the sweeper treats it as dead


def _launch(launch: Launch, jobs: list[list[str]], first_job: int) -> tuple[dict[int, str], bool]:
    """Runs the workers; returns worker index -> why it ended without finishing, if it did,
    and whether the launcher raised (then some workers may still be running)."""
    try:
        ends = launch(jobs, first_job)
    except Exception as exc:  # submitit's UncompletedJobError when a worker job was killed
        log.warning("the launcher raised (%s: %s)", type(exc).__name__, exc)
        return {first_job + i: f"{type(exc).__name__}: {exc}" for i in range(len(jobs))}, True
    return {first_job + i: end.error for i, end in enumerate(ends) if end.error}, False


def _fail_orphan(study, trial, errors: dict[int, str], output_dir: str) -> None:
    """A trial its worker left RUNNING: FAIL with the reason, its parameters enqueued again."""
    from optuna.trial import TrialState

    from harness.sweep.study import read_record
    from harness.trial.record import Record, run_dir

    worker = (trial.user_attrs.get("worker") or {}).get("index")
    job = (trial.user_attrs.get("worker") or {}).get("slurm_job")
    where = f"worker {worker}" + (f" (SLURM job {job})" if job else "")
    reason = (f"{where} ended before the trial finished: "
              f"{errors.get(worker) or 'killed by a signal, out of memory or a time limit?'}")
    chash = trial.user_attrs.get("config_hash")
    if chash:
        folder = run_dir(output_dir, chash)
        rec = read_record(folder)
        if rec is not None and rec.get("status") == "running":
            Record(folder, rec).update(status="failed", error=reason)
    # Optuna has no public way to annotate a trial this process did not ask for.
    study._storage.set_trial_user_attr(trial._trial_id, "error", reason)
    study.tell(trial.number, state=TrialState.FAIL)
    study.enqueue_trial(dict(trial.params))
    log.warning("trial %d: %s; enqueued again", trial.number, reason)


# -- the worker's side ----------------------------------------------------------------------
def work(cfg: DictConfig, run_trial: Callable[[DictConfig, list[str]], Any]) -> dict[str, Any]:
    """The body of a worker job (`harness-train` with `trial.worker` set); `run_trial(cfg,
    overrides)` trains and evaluates one trial and writes its record (harness.cli.run_trial)."""
    import optuna
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.sweep.space import build_space

    t = cfg.trial
    index, invocation = int(t.worker), str(t.invocation)
    study = optuna.load_study(study_name=t.study_name, storage=study_lib.open_storage(t.storage))
    spec = study.user_attrs.get(_spec_key(invocation))
    if spec is None:
        raise ConfigError(f"trial.invocation={invocation}: study {t.study_name} in {t.storage} "
                          "has no such sweep invocation")
    loader = GlobalHydra.instance().config_loader()
    master = cfg.copy()  # what load_sweep_config reads: hydra.overrides.hydra, job.config_name
    with read_write(master), open_dict(master):
        master.hydra = HydraConfig.get()

    def compose(overrides: list[str]) -> DictConfig:
        return loader.load_sweep_config(master, list(overrides))

    engine = Engine(settings_from(spec["settings"]), compose, spec["output_dir"],
                    Path(spec["sweep_dir"]), spec["storage"])
    parser = OverridesParser.create(config_loader=loader)
    space, passthrough = build_space(engine.settings.params, spec["arguments"],
                                     parser.parse_overrides)
    # each worker its own seed stream (identical seeds would sample identical trials), fixed
    # by the invocation and the worker index, not by which worker happened to start first
    base = int(spec.get("trials_at_start", len(study.trials)))
    engine.attach(study, space, seed_offset=base + 1000 * index)
    n_trials = int(spec["n_trials"])
    array = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    mine = {"index": index, "slurm_job": "_".join(array) if all(array)
            else os.environ.get("SLURM_JOB_ID"),
            "host": socket.gethostname(), "pid": os.getpid()}
    log.info("worker %d of invocation %s on %s: pulling trials from %s", index, invocation,
             mine["host"], study.study_name)
    run_one = _runner(engine.settings.devices_per_trial, compose, run_trial,
                      HydraConfig.get().job.config_name, spec["sweep_dir"])
    with _Heartbeat(_heartbeat_path(spec["sweep_dir"], invocation, index), mine):
        ran = _pull(engine, space, passthrough, invocation, mine, n_trials, run_one)
    log.info("worker %d: done, %d trial(s) trained here", index, ran)
    return {"worker/trials": float(ran)}


def _runner(devices_per_trial: int, compose, run_trial, config_name: str,
            sweep_dir: str) -> Callable[[Pending], JobEnd]:
    """How this worker runs a trial: in this process, or with devices_per_trial=k > 1 as a
    torchrun process on the job's k GPUs (one SLURM task with k GPUs, harness.sweep.pool)."""
    if devices_per_trial <= 1:
        return functools.partial(_run_here, compose, run_trial=run_trial)
    from harness.sweep.pool import DevicePool, spawn_trial, visible_devices

    devices = DevicePool(visible_devices(), devices_per_trial).take()
    log.info("trials run on devices %s, one torchrun process each", ",".join(devices))

    def spawn(p: Pending) -> JobEnd:
        p.trial.set_user_attr("devices", list(devices))
        return spawn_trial(p.job_overrides, devices, config_name, sweep_dir)

    return spawn


def _pull(engine: Engine, space, passthrough, invocation, mine, n_trials,
          run_one: Callable[[Pending], JobEnd]) -> int:
    import optuna

    study, allowed = engine.study, engine.allowed_failures(n_trials)
    index, ran = mine["index"], 0
    while study_lib.n_counted(study) < n_trials:
        if len(_ours(study, invocation, (optuna.trial.TrialState.FAIL,))) > allowed:
            log.warning("worker %d: too many failed trials; stopping", index)
            break
        p = engine.ask(space, passthrough)
        p.trial.set_user_attr("invocation", invocation)
        p.trial.set_user_attr("worker", mine)
        if engine.tell_if_cached(p):
            continue
        engine.tell(p, engine.settle(p, run_one(p)))
        ran += 1
    return ran


def _run_here(compose, p: Pending, run_trial: Callable) -> JobEnd:
    """Trains and evaluates one trial in this process; says why it failed, if it did."""
    job_cfg = compose([o for o in p.job_overrides if not o.startswith("hydra.")])
    with read_write(job_cfg), open_dict(job_cfg):
        del job_cfg["hydra"]  # what Hydra's run_job hands a task function
    try:
        return JobEnd(returned=run_trial(job_cfg, p.overrides))
    except Exception as exc:  # the record says pruned / failed; the worker goes on
        return JobEnd(error=f"{type(exc).__name__}: {exc}")
    finally:
        gc.collect()

"""The Optuna side of a sweep: storage, sampler, pruner, the study, and what a record tells it.

Used by the sweeper (hydra_plugins/harness_sweeper) in the sweep process and by
harness/sweep/pruning.py in each trial process, which may be another process or another machine:
everything a trial needs to rebuild the pruner is stored in the study itself
(`study.user_attrs["harness"]`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.config.errors import ConfigError
from harness.sweep.curve_pruner import LearningCurvePruner
from harness.trial.record import pid_alive

log = logging.getLogger(__name__)

SETTINGS_ATTR = "harness"  # study user attr: objectives, pruner, prune metric
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "learning_curve": LearningCurvePruner,
}
SAMPLERS = ("tpe", "nsga2", "random", "grid")
METRIC_ROOTS = ("eval", "train", "cost", "perf", "mem", "params")
BUILTIN_EVAL = ("task", "perplexity", "mmlu", "gsm8k", "bbh")  # eval/<task>/... needs the task
# What counts toward n_trials: finished with a result, or still running in a live sweep.
# FAIL does not count, so a crash or an interruption does not eat the budget.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclass(frozen=True)
class Objective:
    metric: str  # a record metric name, e.g. eval/task/acc
    direction: str  # maximize | minimize


def parse_objectives(specs: Sequence[Mapping[str, str]]) -> list[Objective]:
    if not specs:
        raise ConfigError("hydra.sweeper.objectives: name at least one {metric, direction}")
    out = []
    for i, spec in enumerate(specs):
        metric, direction = spec.get("metric"), spec.get("direction", "maximize")
        if not metric or direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.objectives[{i}]={dict(spec)}: need a metric and "
                              "direction maximize or minimize")
        out.append(Objective(str(metric), str(direction)))
    return out


def check_objectives(objectives: list[Objective], eval_tasks: Sequence[str]) -> None:
    """A misspelt objective would only show after the first trial: catch the obvious ones."""
    tasks = list(eval_tasks)
    for o in objectives:
        root, _, rest = o.metric.partition("/")
        if root not in METRIC_ROOTS or not rest:
            raise ConfigError(f"hydra.sweeper.objectives: {o.metric!r} is not a record metric "
                              f"(names start with {', '.join(r + '/' for r in METRIC_ROOTS)})")
        sub = rest.split("/")[0]
        if root == "eval" and sub in BUILTIN_EVAL and sub not in tasks:
            raise ConfigError(f"hydra.sweeper.objectives: {o.metric!r} needs {sub!r} in "
                              f"eval.tasks (now {tasks})")


def open_storage(url: str) -> str | optuna.storages.BaseStorage:
    """An Optuna storage from a URL; `journal:///path/file.log` is a journal file (NFS-safe)."""
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url


def default_storage(output_dir: str | os.PathLike, study_name: str) -> str:
    path = Path(output_dir).resolve() / "sweeps" / study_name / "study.db"
    return f"sqlite:///{path}"


def _build(kind: str, table: Mapping[str, Any], spec: Mapping[str, Any]):
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        return table[spec.get("name")](**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"hydra.sweeper.{kind}={dict(spec)}: {exc}") from exc


def make_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    spec = dict(spec or {"name": "none"})
    if spec.get("name") not in PRUNERS:
        raise ConfigError(f"hydra.sweeper.pruner.name={spec.get('name')!r}: choose one of "
                          f"{', '.join(PRUNERS)}")
    if spec["name"] == "none":  # `pruner.name=none` on a sweep file's median settings: off
        return optuna.pruners.NopPruner()
    return _build("pruner", PRUNERS, spec)


def make_sampler(spec: Mapping[str, Any], grid_space: Mapping[str, list] | None,
                 seed_offset: int) -> optuna.samplers.BaseSampler:
    """A seeded sampler. The seed moves with the number of trials already in the study, so a
    resumed sweep does not replay its first invocation's random draws."""
    spec = dict(spec)
    name = spec.pop("name", "tpe")
    if name not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler.name={name!r}: choose one of {', '.join(SAMPLERS)}")
    if spec.get("seed") is not None:
        spec["seed"] = int(spec["seed"]) + seed_offset
    if name == "tpe":
        # multivariate + group: TPE models the conditional space jointly per branch;
        # constant_liar: running trials count as bad, so a parallel batch spreads out.
        spec = {"multivariate": True, "group": True, "constant_liar": True, **spec}
    table = {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
        "grid": lambda **kw: optuna.samplers.GridSampler(grid_space or {}, **kw),
    }
    with warnings.catch_warnings():  # group=True is "experimental" in Optuna 5; chosen on purpose
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _build("sampler", table, {"name": name, **spec})


def open_study(study_name: str, storage_url: str,
               objectives: list[Objective]) -> optuna.Study:
    """Creates the study, or loads it to resume; a direction mismatch fails with a clear error."""
    directions = [o.direction for o in objectives]
    study = optuna.create_study(study_name=study_name, storage=open_storage(storage_url),
                                directions=directions, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise ConfigError(
            f"study {study_name!r} in {storage_url} optimizes {have}, but "
            f"hydra.sweeper.objectives say {directions}: set another hydra.sweeper.study_name"
        )
    with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use since
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([o.metric for o in objectives])  # dashboards: not "Objective 0"
    return study


def mark_owner(trial: optuna.trial.Trial) -> None:
    """Which sweep process asked for the trial: how a later run tells a dead one from a live one."""
    trial.set_user_attr("sweeper", {"host": socket.gethostname(), "pid": os.getpid()})


def recover_interrupted(study: optuna.Study) -> list[dict]:
    """Marks trials left RUNNING by a dead sweep process FAIL ("interrupted") and returns their
    parameters, to be enqueued again (the run resumes from its last checkpoint)."""
    again = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("sweeper") or {}
        if pid_alive(owner.get("pid"), owner.get("host")):
            continue  # another sweep process on this study is still working on it
        reason = f"interrupted: sweep process {owner.get('pid')} ended before the trial finished"
        # Optuna has no public way to annotate a trial this process did not ask for.
        study._storage.set_trial_user_attr(t._trial_id, "error", reason)
        study.tell(t.number, state=TrialState.FAIL)
        log.warning("trial %d: %s; enqueued again", t.number, reason)
        again.append(dict(t.params))
    return again


def n_counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


@dataclass
class Outcome:
    state: TrialState
    values: list[float] | None = None
    reason: str | None = None
    step: int | None = None


def outcome_from_record(rec: dict | None, objectives: list[Objective]) -> Outcome | None:
    """What a run's record says about its trial; None while it says nothing final."""
    if rec is None or rec.get("status") == "running":
        return None
    status = rec.get("status")
    if status == "pruned":
        return Outcome(TrialState.PRUNED, step=rec.get("pruned_at_step"))
    if status == "failed":
        return Outcome(TrialState.FAIL, reason=rec.get("error") or "failed (no reason recorded)")
    metrics = rec.get("metrics") or {}
    missing = [o.metric for o in objectives if o.metric not in metrics]
    if missing:
        known = ", ".join(sorted(k for k in metrics if not k.endswith("_stderr")))
        raise ConfigError(f"hydra.sweeper.objectives: metric(s) {missing} are not in the run's "
                          f"record (it has: {known})")
    values = [metrics[o.metric] for o in objectives]
    bad = [o.metric for o, v in zip(objectives, values, strict=True) if v is None or v != v]
    if bad:
        return Outcome(TrialState.FAIL, reason=f"objective(s) {bad} are NaN or missing")
    return Outcome(TrialState.COMPLETE, values=[float(v) for v in values])


def read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "record.json").read_text())
    except (OSError, ValueError):
        return None


def settled_record(folder: Path, poll_s: float = 2.0) -> dict | None:
    """A record `running` in another live process on this machine (an orphaned trial, another
    sweep on the same output folder) is waited for rather than trained a second time."""
    rec = read_record(folder)
    announced = False
    while rec is not None and rec.get("status") == "running":
        env = rec.get("env") or {}
        if (env.get("host") != socket.gethostname() or env.get("pid") == os.getpid()
                or not pid_alive(env.get("pid"), env.get("host"))):
            break
        if not announced:
            log.info("run %s is being trained by pid %s: waiting for it", folder.name[:12],
                     env.get("pid"))
            announced = True
        time.sleep(poll_s)
        rec = read_record(folder)
    return rec

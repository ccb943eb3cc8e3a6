"""The sweep engine, plain Python: ask Optuna for trials, skip what is already recorded, launch
the rest, settle each from its record, tell Optuna.

    engine = Engine(settings, compose, output_dir, sweep_dir, storage_url)
    engine.open(name, space)                         # the study, resumed if it exists
    engine.run_batches(space, passthrough, n, launch)  # or sweep.workers.run_workers(...),
                                                     # or sweep.pool.run_pool(...)
    engine.finish()                                  # study.csv, best.yaml / pareto.yaml

`compose(overrides)` turns a trial's overrides into its config (the Hydra sweeper passes its
config loader; anything that composes the same config will do) and `launch(jobs, first)` runs
a batch of override lists and returns a `JobEnd` per job (the Hydra sweeper passes its
launcher). Records (`<paths.output_dir>/runs/<config_hash>/record.json`) are the source of
truth, not what a launcher returns: a launcher may run trials in other processes or machines,
and hydra-submitit-launcher raises for a whole batch when one job dies. Nothing here assumes a
trial ran in this process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from harness.config.errors import ConfigError, HarnessError
from harness.sweep import study as study_lib
from harness.sweep.report import console_table, write_results
from harness.sweep.settings import Settings
from harness.sweep.space import (
    Param,
    adhoc_name,
    describe,
    format_value,
    grid,
    sample,
    to_overrides,
)
from harness.sweep.study import Outcome, outcome_from_record, settled_record
from harness.trial.record import Record, config_hash, run_command, run_dir
from harness.trial.validate import validate

log = logging.getLogger(__name__)


class SweepError(HarnessError):
    """Stops the sweep with a message for the user."""


def settings_from(values: Mapping[str, Any]) -> Settings:
    """Settings from `hydra.sweeper` (or a worker's stored copy), as plain Python values."""
    plain = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
             for k, v in values.items() if k != "_target_"}
    settings = Settings(**plain)
    settings.n_trials, settings.workers = int(settings.n_trials), int(settings.workers)
    settings.n_jobs = max(int(settings.n_jobs), 1)
    settings.devices_per_trial = int(settings.devices_per_trial)
    settings.trials_per_device = int(settings.trials_per_device)
    settings.max_failure_rate = float(settings.max_failure_rate)
    return settings


@dataclass
class Pending:
    """One asked trial: its parameters as overrides, and the run folder its record goes to."""

    trial: optuna.trial.Trial
    overrides: list[str]  # what defines the run (hashed)
    job_overrides: list[str]  # plus trial.* and hydra.sweep.* for the launcher
    chash: str
    folder: Path
    state: str | None = None  # the TrialState name once told


@dataclass
class JobEnd:
    """What a launcher says about one job it ran: why it failed, or what it returned."""

    error: str | None = None
    returned: Any = None


Launch = Callable[[list[list[str]], int], list[JobEnd]]


class Engine:
    def __init__(self, settings: Settings, compose: Callable[[list[str]], DictConfig],
                 output_dir: str, sweep_dir: Path, storage_url: str):
        self.settings, self.compose = settings, compose
        self.output_dir, self.sweep_dir, self.storage_url = output_dir, Path(sweep_dir), storage_url
        self.objectives = study_lib.parse_objectives(settings.objectives)
        study_lib.make_pruner(settings.pruner)  # a bad pruner setting fails here, not in trial 1
        self.study: optuna.Study | None = None

    # -- setting up ---------------------------------------------------------------------
    @staticmethod
    def name(settings: Settings, space: list[Param], passthrough: list[str]) -> str:
        """The study name: hydra.sweeper.study_name, else one derived from what is searched."""
        return settings.study_name or adhoc_name(describe(space), passthrough, settings.objectives)

    def open(self, name: str, space: list[Param]) -> optuna.Study:
        """Creates or resumes the study: settings the trials read, sampler, interrupted trials
        and hydra.sweeper.enqueue queued."""
        s = self.settings
        study = study_lib.open_study(name, self.storage_url, self.objectives)
        multi = len(self.objectives) > 1
        if multi and s.pruner.get("name", "none") != "none":
            log.warning("pruning is off: Optuna does not prune multi-objective studies")
        study.set_user_attr(study_lib.SETTINGS_ATTR, {
            "objectives": s.objectives,
            "pruner": {"name": "none"} if multi else s.pruner,
            "prune_metric": s.prune_metric, "prune_direction": s.prune_direction,
            "space": describe(space),
        })
        self.attach(study, space, seed_offset=len(study.trials))
        for params in study_lib.recover_interrupted(study):
            study.enqueue_trial(params)
        for params in s.enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)
        return study

    def attach(self, study: optuna.Study, space: list[Param], seed_offset: int) -> None:
        """Uses `study` (opened here or by the sweep process) with a sampler seeded at
        `seed_offset`, so a resumed sweep or another worker does not replay the same draws."""
        is_grid = self.settings.sampler.get("name") == "grid"
        study.sampler = study_lib.make_sampler(self.settings.sampler,
                                               grid(space) if is_grid else None, seed_offset)
        self.study = study

    def n_trials(self, space: list[Param]) -> int:
        if self.settings.sampler.get("name") != "grid":
            return self.settings.n_trials
        size = 1
        for values in grid(space).values():
            size *= len(values)
        if size < self.settings.n_trials:
            log.info("grid sampler: %d combinations, fewer than n_trials=%d", size,
                     self.settings.n_trials)
        return min(size, self.settings.n_trials)

    def allowed_failures(self, n_trials: int) -> int:
        return int(self.settings.max_failure_rate * n_trials)

    # -- one trial ----------------------------------------------------------------------
    def ask(self, space: list[Param], passthrough: list[str]) -> Pending:
        """A new trial: sampled, composed, validated and hashed before anything launches."""
        study = self.study
        trial = study.ask()
        study_lib.mark_owner(trial)
        overrides = [*passthrough, *to_overrides(space, sample(trial, space))]
        try:
            cfg = self.compose(list(overrides))
            validate(cfg)
            chash = config_hash(cfg)
        except Exception as exc:
            study.tell(trial, state=TrialState.FAIL)
            raise ConfigError(f"trial {trial.number}: {overrides}: {exc}") from exc
        folder = run_dir(Path(str(cfg.paths.output_dir)).resolve(), chash)
        trial.set_user_attr("config_hash", chash)
        trial.set_user_attr("command", run_command(overrides))
        n, fmt = trial.number, format_value
        job = [*overrides, f"trial.study_name={fmt(study.study_name)}",
               f"trial.storage={fmt(self.storage_url)}", f"trial.number={n}",
               f"hydra.sweep.dir={fmt(str(self.sweep_dir))}", f"hydra.sweep.subdir=trial_{n}"]
        return Pending(trial, overrides, job, chash, folder)

    def cached(self, p: Pending) -> Outcome | None:
        """The recorded outcome when the run is already complete (no training), else None.
        The recorded validation losses are reported too, so the pruner can compare with it."""
        rec = settled_record(p.folder)
        if rec is None or rec.get("status") != "complete":
            return None
        outcome = self._guarded(p, rec)
        s = self.settings
        if len(self.objectives) == 1 and s.prune_metric == "eval/loss":
            sign = 1.0 if s.prune_direction == self.objectives[0].direction else -1.0
            for h in rec.get("history") or []:
                if h.get("eval/loss") is not None:
                    p.trial.report(sign * h["eval/loss"], int(h["step"]))
        return outcome

    def settle(self, p: Pending, end: JobEnd | None, launch_error: str | None = None) -> Outcome:
        """The trial's outcome from its record; a trial without a finished record failed."""
        rec = settled_record(p.folder)
        outcome = self._guarded(p, rec)
        if outcome is None and rec is None and end is not None and end.error is None \
                and isinstance(end.returned, dict):
            # no record where its hash says (a config the job hashed differently): the job's word
            log.warning("trial %d: no record at %s; using the job's return value",
                        p.trial.number, p.folder)
            outcome = self._guarded(p, {"status": "complete", "metrics": dict(end.returned)})
        if outcome is not None:
            return outcome
        reason = ((end.error if end is not None else None) or launch_error
                  or "the trial ended without finishing its record (killed by a signal, "
                     "out of memory or a time limit?)")
        if rec is not None:  # left `running` by a dead process: say why in the record
            Record(p.folder, rec).update(status="failed", error=reason)
        return Outcome(TrialState.FAIL, reason=reason)

    def _guarded(self, p: Pending, rec: dict | None) -> Outcome | None:
        """A record without the objective metric is a config error: fail the trial, then stop."""
        try:
            return outcome_from_record(rec, self.objectives)
        except Exception:
            self.study.tell(p.trial, state=TrialState.FAIL)
            raise

    def tell(self, p: Pending, outcome: Outcome, note: str | None = None) -> None:
        if outcome.reason:
            p.trial.set_user_attr("error", outcome.reason)
        if outcome.step is not None:
            p.trial.set_user_attr("pruned_at_step", outcome.step)
        if outcome.values is not None:
            self.study.tell(p.trial, outcome.values)
        else:
            self.study.tell(p.trial, state=outcome.state)
        p.state = outcome.state.name
        detail = {"COMPLETE": f"values {outcome.values}",
                  "PRUNED": f"pruned at step {outcome.step}",
                  "FAIL": f"failed: {outcome.reason}"}[outcome.state.name]
        log.info("trial %d [%s] %s%s", p.trial.number, p.chash[:12], detail,
                 f" ({note})" if note else "")

    def tell_if_cached(self, p: Pending) -> bool:
        cached = self.cached(p)
        if cached is None:
            return False
        p.trial.set_user_attr("cache_hit", True)
        self.tell(p, cached, "cache hit: recorded values, no training")
        return True

    # -- batches ------------------------------------------------------------------------
    def run_batches(self, space: list[Param], passthrough: list[str], n_trials: int,
                    launch: Launch) -> None:
        failures, allowed = 0, self.allowed_failures(n_trials)
        while (todo := n_trials - study_lib.n_counted(self.study)) > 0:
            n = min(self.settings.n_jobs, todo)
            failures += self.run_batch([self.ask(space, passthrough) for _ in range(n)], launch)
            if failures > allowed:
                self.stop_for_failures(failures, n_trials)

    def run_batch(self, batch: list[Pending], launch: Launch) -> int:
        """Cache hits are told at once; the rest launch together. Returns the failure count."""
        to_launch: list[Pending] = []
        copies: list[tuple[Pending, Pending]] = []
        for p in batch:
            first = next((q for q in to_launch if q.chash == p.chash), None)
            if self.tell_if_cached(p):
                continue
            if first is not None:  # same run twice in one batch: train it once
                copies.append((p, first))
            else:
                to_launch.append(p)
        ends, launch_error = self._launch(to_launch, launch)
        outcomes = {}
        for p, end in zip(to_launch, ends, strict=True):
            outcomes[p.chash] = self.settle(p, end, launch_error)
            self.tell(p, outcomes[p.chash])
        for p, first in copies:
            o = outcomes[first.chash]
            p.trial.set_user_attr("duplicate_of", first.trial.number)
            self.tell(p, Outcome(o.state, o.values, o.reason, o.step),
                      f"same run as trial {first.trial.number}")
        return sum(1 for p in batch if p.state == "FAIL")

    @staticmethod
    def _launch(batch: list[Pending], launch: Launch) -> tuple[list, str | None]:
        if not batch:
            return [], None
        try:
            return list(launch([p.job_overrides for p in batch], batch[0].trial.number)), None
        except Exception as exc:  # e.g. submitit's UncompletedJobError when a job was killed
            log.warning("the launcher raised for this batch (%s: %s); reading each trial's "
                        "record instead", type(exc).__name__, exc)
            return [None] * len(batch), f"{type(exc).__name__}: {exc}"

    # -- the end ------------------------------------------------------------------------
    def stop_for_failures(self, failures: int, n_trials: int) -> None:
        write_results(self.study, self.objectives, self.sweep_dir, self.output_dir)
        raise SweepError(
            f"sweep {self.study.study_name} stopped: {failures} trials failed, more than "
            f"max_failure_rate={self.settings.max_failure_rate} x n_trials={n_trials} allows; "
            f"reasons in {self.sweep_dir / 'study.csv'} and the runs' record.json")

    def finish(self) -> None:
        path = write_results(self.study, self.objectives, self.sweep_dir, self.output_dir)
        print(console_table(self.study, self.objectives), flush=True)
        print(f"study.csv{' and ' + path.name if path else ''} in {self.sweep_dir}", flush=True)

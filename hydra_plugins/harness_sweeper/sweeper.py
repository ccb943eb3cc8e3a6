"""The sweep loop: ask Optuna for a batch, skip what is already recorded, launch the rest through
whatever Hydra launcher is configured, then tell Optuna what each trial's record says.

Records (`<paths.output_dir>/runs/<config_hash>/record.json`) are the source of truth, not
the launcher's return values: a launcher may run trials in other processes or machines, and
hydra-submitit-launcher raises for a whole batch when one job dies. Nothing here assumes a
trial ran in this process. (No `from __future__ import annotations`: see config.py.)
"""

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class SweepError(CompactHydraException):
    """Stops the sweep; Hydra prints the message without a traceback."""


@dataclass
class Pending:
    """One asked trial: its parameters as overrides, and the run folder its record goes to."""

    trial: Any  # optuna.trial.Trial
    overrides: list[str]  # what defines the run (hashed)
    job_overrides: list[str]  # plus trial.* and hydra.sweep.* for the launcher
    chash: str
    folder: Path
    state: str | None = None  # the TrialState name once told


class HarnessSweeper(Sweeper):
    def __init__(self, study_name, storage, n_trials, n_jobs, sampler, pruner, objectives,
                 prune_metric, prune_direction, params, enqueue, max_failure_rate, workers=0):
        plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v  # noqa: E731
        self.study_name, self.storage = study_name, storage
        self.n_trials, self.n_jobs = int(n_trials), max(int(n_jobs), 1)
        self.sampler, self.pruner = plain(sampler), plain(pruner)
        self.objectives, self.params, self.enqueue = plain(objectives), plain(params), plain(enqueue)
        self.prune_metric, self.prune_direction = prune_metric, prune_direction
        self.max_failure_rate = float(max_failure_rate)
        self.workers = int(workers)
        self.settings = {  # what a worker job needs to rebuild this sweeper (asynchronous mode)
            "study_name": study_name, "storage": storage, "n_trials": self.n_trials,
            "n_jobs": self.n_jobs, "sampler": self.sampler, "pruner": self.pruner,
            "objectives": self.objectives, "prune_metric": prune_metric,
            "prune_direction": prune_direction, "params": self.params, "enqueue": [],
            "max_failure_rate": self.max_failure_rate, "workers": self.workers}
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.config_loader = hydra_context.config_loader
        # paths.* interpolate ${hydra:runtime.cwd}: resolvable in this process only with this set
        HydraConfig.instance().set_config(config)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list:
        from harness.errors import HarnessError

        try:
            return self._sweep(arguments)
        except HarnessError as exc:  # a setting the user can fix: one line, no traceback
            raise SweepError(str(exc)) from exc

    def _sweep(self, arguments: list[str]) -> list:
        from harness import sweep_study as ss
        from harness.sweep_report import console_table, write_results
        from harness.sweep_space import adhoc_name, build_space, describe, validate_space

        parser = OverridesParser.create(config_loader=self.config_loader)
        space, passthrough = build_space(self.params, arguments, parser.parse_overrides)
        validate_space(space, self.config, self.config_loader.get_group_options)
        self.objectives_ = ss.parse_objectives(self.objectives)
        ss.check_objectives(self.objectives_, self.config.eval.tasks if "eval" in self.config else [])
        ss.make_pruner(self.pruner)  # a bad pruner setting fails here, not in trial 1
        name = self.study_name or adhoc_name(describe(space), passthrough, self.objectives)
        self.sweep_dir = self._set_sweep_dir(name)
        self.output_dir = str(Path(self.config.paths.output_dir).resolve())
        self.storage_url = self.storage or ss.default_storage(self.output_dir, name)
        self.study = study = self._open(ss, name, space)
        n_trials = self._n_trials(space)
        log.info("study %s (%s): %d trials in total, %d already counted; %s\n  %s",
                 name, self.storage_url, n_trials, ss.n_counted(study),
                 f"{self.workers} asynchronous workers" if self.workers > 0
                 else f"batches of {self.n_jobs}",
                 "\n  ".join(describe(space) or ["(no parameters)"]))
        if self.workers > 0:
            from harness.sweep_worker import run_workers

            run_workers(self, study, arguments, passthrough, n_trials)
        else:
            self._run_batches(study, space, passthrough, n_trials)
        path = write_results(study, self.objectives_, self.sweep_dir, self.output_dir)
        print(console_table(study, self.objectives_), flush=True)
        print(f"study.csv{' and ' + path.name if path else ''} in {self.sweep_dir}", flush=True)
        return []

    def _run_batches(self, study, space: list, passthrough: list[str], n_trials: int) -> None:
        from harness import sweep_study as ss

        failures, allowed = 0, int(self.max_failure_rate * n_trials)
        while (todo := n_trials - ss.n_counted(study)) > 0:
            batch = [self._ask(study, space, passthrough) for _ in range(min(self.n_jobs, todo))]
            failures += self._run_batch(study, batch)
            if failures > allowed:
                self.stop_for_failures(failures, n_trials)

    def stop_for_failures(self, failures: int, n_trials: int) -> None:
        from harness.sweep_report import write_results

        write_results(self.study, self.objectives_, self.sweep_dir, self.output_dir)
        raise SweepError(
            f"sweep {self.study.study_name} stopped: {failures} trials failed, more than "
            f"max_failure_rate={self.max_failure_rate} x n_trials={n_trials} allows; "
            f"reasons in {self.sweep_dir / 'study.csv'} and the runs' record.json")

    # -- setting up ---------------------------------------------------------------------
    def _set_sweep_dir(self, name: str) -> Path:
        with read_write(self.config.hydra), open_dict(self.config.hydra):
            self.config.hydra.sweeper.study_name = name
            sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
            self.config.hydra.sweep.dir = str(sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        return sweep_dir

    def _open(self, ss, name: str, space: list):
        from harness.sweep_space import describe, grid

        study = ss.open_study(name, self.storage_url, self.objectives_)
        multi = len(self.objectives_) > 1
        if multi and self.pruner.get("name", "none") != "none":
            log.warning("pruning is off: Optuna does not prune multi-objective studies")
        study.set_user_attr(ss.SETTINGS_ATTR, {
            "objectives": self.objectives,
            "pruner": {"name": "none"} if multi else self.pruner,
            "prune_metric": self.prune_metric, "prune_direction": self.prune_direction,
            "space": describe(space),
        })
        is_grid = self.sampler.get("name") == "grid"
        study.sampler = ss.make_sampler(self.sampler, grid(space) if is_grid else None,
                                        seed_offset=len(study.trials))
        for params in ss.recover_interrupted(study):
            study.enqueue_trial(params)
        for params in self.enqueue:
            study.enqueue_trial(dict(params), skip_if_exists=True)
        return study

    def _n_trials(self, space: list) -> int:
        if self.sampler.get("name") != "grid":
            return self.n_trials
        from harness.sweep_space import grid

        size = 1
        for values in grid(space).values():
            size *= len(values)
        if size < self.n_trials:
            log.info("grid sampler: %d combinations, fewer than n_trials=%d", size, self.n_trials)
        return min(size, self.n_trials)

    # -- one batch ----------------------------------------------------------------------
    def _ask(self, study, space: list, passthrough: list[str]) -> Pending:
        from harness.errors import ConfigError
        from harness.record import config_hash, run_dir
        from harness.sweep_space import NOT_IN_COMMAND, format_value, sample, to_overrides
        from harness.sweep_study import mark_owner

        trial = study.ask()
        mark_owner(trial)
        overrides = [*passthrough, *to_overrides(space, sample(trial, space))]
        try:
            cfg = self.config_loader.load_sweep_config(self.config, list(overrides))
            chash = config_hash(cfg)
        except Exception as exc:
            study.tell(trial, state=_state("FAIL"))
            raise ConfigError(f"trial {trial.number}: cannot compose {overrides}: {exc}") from exc
        folder = run_dir(Path(str(cfg.paths.output_dir)).resolve(), chash)
        trial.set_user_attr("config_hash", chash)
        shown = [o for o in overrides if not o.lstrip("+~").startswith(NOT_IN_COMMAND)]
        trial.set_user_attr("command", shlex.join(["harness-train", *shown]))
        n, fmt = trial.number, format_value
        job = [*overrides, f"trial.study_name={fmt(study.study_name)}",
               f"trial.storage={fmt(self.storage_url)}", f"trial.number={n}",
               f"trial.prune_metric={fmt(self.prune_metric)}",
               f"trial.prune_direction={fmt(self.prune_direction)}",
               f"hydra.sweep.dir={fmt(str(self.sweep_dir))}", f"hydra.sweep.subdir=trial_{n}"]
        return Pending(trial, overrides, job, chash, folder)

    def _run_batch(self, study, batch: list[Pending]) -> int:
        """Cache hits are told at once; the rest launch together. Returns the failure count."""
        from harness.sweep_study import Outcome

        to_launch: list[Pending] = []
        copies: list[tuple[Pending, Pending]] = []
        for p in batch:
            cached = self._cached(p)
            first = next((q for q in to_launch if q.chash == p.chash), None)
            if cached is not None:
                p.trial.set_user_attr("cache_hit", True)
                self._tell(study, p, cached, "cache hit: recorded values, no training")
            elif first is not None:  # same run twice in one batch: train it once
                copies.append((p, first))
            else:
                to_launch.append(p)
        returns, launch_error = self._launch(to_launch)
        outcomes = {}
        for p, ret in zip(to_launch, returns, strict=True):
            outcomes[p.chash] = self._settle(p, ret, launch_error)
            self._tell(study, p, outcomes[p.chash])
        for p, first in copies:
            o = outcomes[first.chash]
            p.trial.set_user_attr("duplicate_of", first.trial.number)
            self._tell(study, p, Outcome(o.state, o.values, o.reason, o.step),
                       f"same run as trial {first.trial.number}")
        return sum(1 for p in batch if p.state == "FAIL")

    def _cached(self, p: Pending):
        from harness.sweep_study import outcome_from_record, settled_record

        rec = settled_record(p.folder)
        if rec is None or rec.get("status") != "complete":
            return None
        outcome = self._guarded(p, outcome_from_record, rec)
        if len(self.objectives_) == 1:  # the pruner can compare later trials with this one
            sign = 1.0 if self.prune_direction == self.objectives_[0].direction else -1.0
            for h in rec.get("history") or []:
                if h.get("eval/loss") is not None and self.prune_metric == "eval/loss":
                    p.trial.report(sign * h["eval/loss"], int(h["step"]))
        return outcome

    def _launch(self, batch: list[Pending]) -> tuple[list, str | None]:
        if not batch:
            return [], None
        try:
            returns = self.launcher.launch([p.job_overrides for p in batch],
                                           initial_job_idx=batch[0].trial.number)
            return list(returns), None
        except Exception as exc:  # e.g. submitit's UncompletedJobError when a job was killed
            log.warning("the launcher raised for this batch (%s: %s); reading each trial's "
                        "record instead", type(exc).__name__, exc)
            return [None] * len(batch), f"{type(exc).__name__}: {exc}"

    def _settle(self, p: Pending, ret, launch_error: str | None):
        """The trial's outcome from its record; a trial without a finished record failed."""
        from harness.record import Record
        from harness.sweep_study import Outcome, outcome_from_record, settled_record

        rec = settled_record(p.folder)
        outcome = self._guarded(p, outcome_from_record, rec)
        if outcome is None and rec is None:  # no record where its hash says: the job's word
            outcome = self._from_job_return(p, ret)
        if outcome is not None:
            return outcome
        exc = _job_exception(ret)
        reason = (f"{type(exc).__name__}: {exc}" if exc else launch_error
                  or "the trial ended without finishing its record (killed by a signal, "
                     "out of memory or a time limit?)")
        if rec is not None:  # left `running` by a dead process: say why in the record
            Record(p.folder, rec).update(status="failed", error=reason)
        return Outcome(_state("FAIL"), reason=reason)

    def _from_job_return(self, p: Pending, ret):
        """Only when the record is missing (a config the job hashed differently, a job that
        failed before writing one): what the launcher returned, if it says anything."""
        import optuna

        from harness.sweep_study import Outcome, outcome_from_record

        exc = _job_exception(ret)
        if isinstance(exc, optuna.TrialPruned):
            return Outcome(_state("PRUNED"), step=getattr(exc, "step", None))
        if ret is not None and ret.status == JobStatus.COMPLETED and isinstance(
                ret.return_value, dict):
            log.warning("trial %d: no record at %s; using the job's return value",
                        p.trial.number, p.folder)
            return self._guarded(p, outcome_from_record,
                                 {"status": "complete", "metrics": dict(ret.return_value)})
        return None

    def _guarded(self, p: Pending, read, rec: dict):
        """A record without the objective metric is a config error: fail the trial, then stop."""
        try:
            return read(rec, self.objectives_)
        except Exception:
            self.study.tell(p.trial, state=_state("FAIL"))
            raise

    def _tell(self, study, p: Pending, outcome, note: str | None = None) -> None:
        if outcome.reason:
            p.trial.set_user_attr("error", outcome.reason)
        if outcome.step is not None:
            p.trial.set_user_attr("pruned_at_step", outcome.step)
        if outcome.values is not None:
            study.tell(p.trial, outcome.values)
        else:
            study.tell(p.trial, state=outcome.state)
        p.state = outcome.state.name
        detail = {"COMPLETE": f"values {outcome.values}",
                  "PRUNED": f"pruned at step {outcome.step}",
                  "FAIL": f"failed: {outcome.reason}"}[outcome.state.name]
        log.info("trial %d [%s] %s%s", p.trial.number, p.chash[:12], detail,
                 f" ({note})" if note else "")


def _state(name: str):
    from optuna.trial import TrialState

    return TrialState[name]


def _job_exception(ret) -> BaseException | None:
    if ret is None or ret.status != JobStatus.FAILED:
        return None
    try:
        ret.return_value  # noqa: B018 -- raises the job's exception
    except Exception as exc:
        return exc
    return None

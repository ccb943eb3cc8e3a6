"""Pruning inside a trial: report the validation metric to the Optuna trial, stop when told.

The sweeper hands each trial `trial.study_name`, `trial.storage` and `trial.number` (config
node `trial`, not hashed); the pruner and the metric it watches are read from the study
itself (`study.user_attrs["harness"]`, written by the engine). `trial_monitors(cfg)` gives the
monitors that harness-train hands the trial (`harness.trial.run.run(cfg, overrides,
monitors)`, the train stage's `Monitor` interface): at every evaluation (`train.eval_every`)
the monitor reports `hydra.sweeper.prune_metric` (default `eval/loss`) with the step, and
tells training to stop when the study's pruner says so; the trial then records `status:
pruned` with the step. Under the learning-curve pruner (harness/sweep/curve_pruner.py) the
trial also evaluates before its first step, so the first report after it already has a rate
of improvement to judge.

Directions: Optuna's pruners compare intermediate values in the study's direction. When the
prune metric goes the other way (minimize `eval/loss` in a study that maximizes accuracy),
the callback reports the negated value, so "better" means the same thing to the pruner.
Multi-objective studies have no pruning in Optuna: the monitor list is then empty.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping

import optuna
from omegaconf import DictConfig

from harness.sweep.study import SETTINGS_ATTR, make_pruner, open_storage

log = logging.getLogger(__name__)


class PruningMonitor:
    """Reports each evaluation to the Optuna trial; asks training to stop when it should."""

    def __init__(self, trial: optuna.trial.Trial, metric: str, sign: float,
                 eval_on_start: bool = False):
        self.trial = trial
        self.eval_on_start = eval_on_start  # the trial then evaluates (and reports) at step 0
        self.metric = metric
        self.sign = sign
        self.warned = False

    def report(self, metrics: Mapping[str, float], step: int) -> str | None:
        value = metrics.get(self.metric)
        if value is None:
            if not self.warned:
                log.warning("pruning: %s is not among the evaluation metrics %s", self.metric,
                            sorted(metrics))
                self.warned = True
            return None
        self.trial.report(self.sign * float(value), step)
        if self.trial.should_prune():
            return (f"pruned at step {step}: {self.metric}={float(value):.4g} "
                    f"(trial {self.trial.number})")
        return None


@functools.cache
def _storage(url: str) -> optuna.storages.BaseStorage:
    """One storage object per URL and process: opening an RDB storage checks its schema (~1 s),
    which trials that run in the sweep's own process (basic launcher) need not repeat."""
    return optuna.storages.get_storage(open_storage(url))


def trial_monitors(cfg: DictConfig) -> list[PruningMonitor]:
    """The pruning monitor for the Optuna trial named in `cfg.trial` (empty when off)."""
    t = cfg.trial
    if t.study_name is None or t.storage is None or t.number is None:
        return []
    storage = _storage(t.storage)
    study = optuna.load_study(study_name=t.study_name, storage=storage)
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    pruner_spec = settings.get("pruner") or {"name": "none"}
    if pruner_spec.get("name") == "none":
        return []
    if len(study.directions) > 1:
        log.info("pruning off: Optuna does not prune multi-objective studies")
        return []
    study.pruner = make_pruner(pruner_spec)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(t.study_name), int(t.number))
    metric, direction = settings["prune_metric"], settings["prune_direction"]
    sign = 1.0 if direction == study.direction.name.lower() else -1.0
    log.info("pruning: %s (%s) reported to trial %d of %s with %s",
             metric, direction, t.number, t.study_name, pruner_spec["name"])
    return [PruningMonitor(optuna.trial.Trial(study, trial_id), metric, sign,
                           eval_on_start=getattr(study.pruner, "eval_on_start", False))]

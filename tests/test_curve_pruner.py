"""The learning-curve pruner (harness/sweep/curve_pruner.py) on Optuna studies built by hand.

The curves are shaped like the recorded ones of sweeps/pruning_benchmark.yaml (BENCHMARKS.md):
validation loss 7.62 before training, a learning rate too low barely moves it, a good one
falls fast but can still trail a too-high rate at the first reports.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import yaml

from harness.config.errors import ConfigError
from harness.sweep.curve_pruner import LearningCurvePruner
from harness.sweep.study import make_pruner

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parent.parent
START = 7.62
HIGH_LR = {0: START, 4: 4.2, 8: 3.9, 12: 3.5, 16: 3.5, 20: 3.2, 24: 3.1, 28: 2.8, 32: 2.7}


def study_with(*curves: dict[int, float], direction: str = "minimize",
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """A study whose finished trials have these curves (the last value is the objective)."""
    study = optuna.create_study(direction=direction, pruner=pruner or LearningCurvePruner())
    for curve in curves:
        trial = study.ask()
        for step, value in curve.items():
            trial.report(value, step)
        study.tell(trial, curve[max(curve)])
    return study


def pruned_at(study: optuna.Study, curve: dict[int, float]) -> int | None:
    """Reports `curve` to a new trial; the step at which the pruner stops it, or None."""
    trial = study.ask()
    for step, value in curve.items():
        trial.report(value, step)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return step
    study.tell(trial, curve[max(curve)])
    return None


def test_a_trial_that_barely_moves_stops_at_its_first_report():
    study = study_with(HIGH_LR)  # best finished: 2.7 at step 32
    # 7.62 -> 7.44: 0.045 a step; 28 more steps at that rate end at 6.18 > 2.7
    assert pruned_at(study, {0: START, 4: 7.44, 8: 7.24, 32: 6.9}) == 4


def test_a_fast_learner_behind_the_leaders_runs_on_where_a_percentile_pruner_cuts_it():
    """The short-horizon bias: at step 4 the moderate learning rate (5.98) trails both finished
    trials (4.2, 4.4), so a median pruner stops it; its rate (0.41 a step) could still win."""
    other = {0: START, 4: 4.4, 8: 4.0, 32: 3.0}
    bloomer = {0: START, 4: 5.98, 8: 4.47, 12: 3.73, 16: 3.52, 32: 2.38}
    assert pruned_at(study_with(HIGH_LR, other), bloomer) is None
    median = optuna.pruners.PercentilePruner(50.0, n_startup_trials=2)
    assert pruned_at(study_with(HIGH_LR, other, pruner=median), bloomer) == 4


def test_reports_after_the_judged_fraction_are_never_judged():
    study = study_with(HIGH_LR)  # run length 32: a quarter is step 8
    stalls_late = {0: START, 4: 4.6, 8: 3.9, 12: 3.9, 16: 3.9, 20: 3.9, 32: 2.6}
    assert pruned_at(study, stalls_late) is None  # flat from step 8 on, yet past the quarter
    judge_all = study_with(HIGH_LR, pruner=LearningCurvePruner(judge_fraction=1.0))
    assert pruned_at(judge_all, stalls_late) == 12


def test_the_latest_rate_counts_not_the_first():
    study = study_with(HIGH_LR)
    # fast at first (0.4 a step to step 4), then 0.01 a step: 5.98 - 0.01 * 24 > 2.7
    assert pruned_at(study, {0: START, 4: 6.0, 8: 5.98, 32: 5.5}) == 8


def test_maximized_metrics_project_upward():
    acc = {0: 0.10, 4: 0.50, 8: 0.60, 32: 0.80}
    study = study_with(acc, direction="maximize")
    assert pruned_at(study, {0: 0.10, 4: 0.11, 8: 0.12, 32: 0.15}) == 4  # 0.11 + 28 * 0.0025
    assert pruned_at(study, {0: 0.10, 4: 0.30, 8: 0.45, 32: 0.85}) is None


def test_no_bar_no_rate_no_pruning_and_nan_prunes():
    empty = optuna.create_study(pruner=LearningCurvePruner())
    assert pruned_at(empty, {0: START, 4: 7.62, 8: 7.62}) is None  # nothing finished yet
    study = study_with(HIGH_LR)
    assert pruned_at(study, {4: 7.6, 32: 7.5}) is None  # step 4 alone has no rate
    assert pruned_at(study, {0: START, 4: math.nan}) == 4  # diverged
    margin = study_with(HIGH_LR, pruner=LearningCurvePruner(margin=2.0))  # bar 2.7 -> 8.1
    assert pruned_at(margin, {0: START, 4: 7.44, 8: 7.24, 32: 6.9}) is None


def test_benchmark_pruner_judges_the_first_quarter_of_a_trial():
    """sweeps/pruning_benchmark.yaml: its pruner stops a trial that barely moves at the first
    report (rated from step 0), keeps a fast one that trails, and never judges a report after
    the first quarter of the run."""
    sweep = yaml.safe_load((ROOT / "sweeps" / "pruning_benchmark.yaml").read_text())
    spec, last = sweep["hydra"]["sweeper"]["pruner"], sweep["train"]["max_steps"]
    every = sweep["train"]["eval_every"]
    study = study_with({0: START, every: 4.2, 2 * every: 3.9, last: 2.7},
                       pruner=make_pruner(dict(spec)))
    assert pruned_at(study, {0: START, every: 7.5, last: 7.0}) == every
    assert pruned_at(study, {0: START, every: 6.0, 2 * every: 4.5, last: 2.5}) is None
    after = int(spec["judge_fraction"] * last) + every
    flat = {0: START, every: 4.0, 2 * every: 3.5, after: 3.5, after + every: 3.5, last: 3.5}
    assert pruned_at(study, flat) is None


@pytest.mark.parametrize("setting", [{"judge_fraction": 0.0}, {"judge_fraction": 1.5},
                                     {"n_startup_trials": 0}, {"margin": -0.1},
                                     {"n_warmup_steps": -1}, {"interval_steps": 2}])
def test_bad_settings_name_the_setting(setting):
    with pytest.raises(ConfigError) as caught:
        make_pruner({"name": "learning_curve", **setting})
    assert "hydra.sweeper.pruner" in str(caught.value)
    assert next(iter(setting)) in str(caught.value)

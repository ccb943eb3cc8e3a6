"""A pruner that stops a trial only when it can no longer catch the best finished trial.

Optuna's pruners (median, percentile, successive halving) compare a trial with the others at
the same step. On learning-rate searches that is biased toward the short horizon: at the
first reports, high learning rates are ahead, and the trial that ends best (a moderate rate,
often still warming up) is behind (BENCHMARKS.md, sweep efficiency). `LearningCurvePruner`
asks instead whether the trial could still win: it extends the trial's learning curve to the
end of the run in a straight line at its latest rate of improvement, and prunes when even that
line ends worse than the final value of the best finished trial. A learning curve flattens as
it goes, so the straight line is optimistic, and a trial that is still improving fast is kept
however far behind it is. A curve can also stall and then drop again (a plateau), which a
straight line cannot foresee, so the pruner judges only the reports in the first part of a
trial (`judge_fraction`, a quarter by default), where curves still fall steeply.

The rate needs two reports: whenever this pruner is on, the harness evaluates each trial
before its first step (harness/stages/train.py, keeping the random state, so the training is the
same as without it), and the first report at step `eval_every` can already be judged. The
end of the run is the last reported step of the finished trials.
"""

from __future__ import annotations

import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


class LearningCurvePruner(optuna.pruners.BasePruner):
    """Prunes a trial whose optimistic (linear) extrapolation cannot beat the best finished one.

    Args:
        n_startup_trials: no pruning until this many trials have finished (at least 1: the
            best finished trial is the bar).
        n_warmup_steps: no pruning before this step.
        judge_fraction: judge only reports at steps up to this fraction of the run's length
            (the finished trials' last reported step); 1.0 judges every report.
        margin: prune only when the extrapolation ends worse than the bar by more than this
            share of the bar's magnitude (0.05: 5%), for noisy metrics.
    """

    eval_on_start = True  # harness.sweep.pruning: the trial reports step 0 too, for the first rate

    def __init__(self, n_startup_trials: int = 1, n_warmup_steps: int = 0,
                 judge_fraction: float = 0.25, margin: float = 0.0):
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be >= 1 (the bar is the best finished "
                             f"trial), got {n_startup_trials}")
        if n_warmup_steps < 0:
            raise ValueError(f"n_warmup_steps must be >= 0, got {n_warmup_steps}")
        if not 0.0 < judge_fraction <= 1.0:
            raise ValueError(f"judge_fraction must be in (0, 1], got {judge_fraction}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.n_startup_trials = n_startup_trials
        self.n_warmup_steps = n_warmup_steps
        self.judge_fraction = judge_fraction
        self.margin = margin

    def prune(self, study: optuna.study.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0  # lower is better
        values = {s: sign * v for s, v in trial.intermediate_values.items()}
        value = values[step]
        if math.isnan(value):
            return True  # diverged
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.last_step is not None]
        if len(finished) < self.n_startup_trials or step < self.n_warmup_steps:
            return False
        horizon = max(t.last_step for t in finished)
        if step >= horizon or step > self.judge_fraction * horizon:
            return False
        earlier = [s for s in values if s < step]
        if not earlier:
            return False  # one report: no rate yet
        prev = max(earlier)
        rate = max(0.0, (values[prev] - value) / (step - prev))  # a NaN rate counts as 0
        reached = min(v for v in values.values() if not math.isnan(v))
        projected = reached - rate * (horizon - step)
        finals = [v for v in (sign * t.intermediate_values[t.last_step] for t in finished)
                  if not math.isnan(v)]
        if not finals:
            return False
        bar = min(finals)
        return projected > bar + self.margin * abs(bar)

"""End of a sweep: the best trial (one objective) or the Pareto front (several), as a console
table and as files in the sweep folder:

- `study.csv`: every trial: study_name, number, state, value (one objective) or values_<i>,
  params_<name>, config_hash, error, pruned_at_step, cache_hit, datetime_start/complete,
  duration (`harness-report` reads it). Values are empty unless the trial is COMPLETE.
- `best.yaml` (one objective) or `pareto.yaml` (several): the winning trials with their
  values, parameters, config hash, record path and the command that reproduces each.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from harness.config.files import atomic_write_text
from harness.sweep.study import Objective
from harness.trial.record import run_dir


def trials_table(study: optuna.Study):
    """All trials as a DataFrame with the columns study.csv promises."""
    frame = study.trials_dataframe(
        attrs=("number", "state", "value", "params", "user_attrs", "datetime_start",
               "datetime_complete", "duration"))
    frame = frame.rename(columns=lambda c: c.removeprefix("user_attrs_"))
    # With metric names set, Optuna names the columns after them (values_eval/task/acc);
    # study.csv keeps value / values_<i>, which readers index by objective position.
    names = study.metric_names or []
    if len(names) == 1:
        frame = frame.rename(columns={f"values_{names[0]}": "value", f"value_{names[0]}": "value"})
    else:
        frame = frame.rename(columns={f"values_{n}": f"values_{i}" for i, n in enumerate(names)})
    for column in ("config_hash", "error", "pruned_at_step", "cache_hit", "sweeper"):
        if column not in frame:
            frame[column] = None
    frame = frame.drop(columns=["sweeper"])
    # Optuna stores a pruned trial's last intermediate value (a loss, maybe negated) as its
    # value; in a table of objective values that would read as a score.
    values = [c for c in frame.columns if c == "value" or c.startswith("values_")]
    frame.loc[frame["state"] != "COMPLETE", values] = None
    frame.insert(0, "study_name", study.study_name)
    return frame


def winners(study: optuna.Study, objectives: list[Objective]) -> list[FrozenTrial]:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(objectives) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def _entry(trial: FrozenTrial, objectives: list[Objective], output_dir: str) -> dict:
    chash = trial.user_attrs.get("config_hash")
    entry = {
        "trial": trial.number,
        "values": {o.metric: float(v) for o, v in zip(objectives, trial.values, strict=True)},
        "params": dict(trial.params),
        "config_hash": chash,
        "record": str(run_dir(output_dir, chash) / "record.json") if chash else None,
        "command": trial.user_attrs.get("command"),
    }
    if trial.user_attrs.get("cache_hit"):
        entry["cache_hit"] = True
    return entry


def write_results(study: optuna.Study, objectives: list[Objective], sweep_dir: Path,
                  output_dir: str) -> Path | None:
    """Writes study.csv and best.yaml / pareto.yaml; returns the YAML path (None: no result)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / "study.csv", trials_table(study).to_csv(index=False))
    best = winners(study, objectives)
    if not best:
        return None
    name = "best.yaml" if len(objectives) == 1 else "pareto.yaml"
    doc = {
        "study_name": study.study_name,
        "objectives": [{"metric": o.metric, "direction": o.direction} for o in objectives],
        "trials": [_entry(t, objectives, output_dir) for t in best],
    }
    path = sweep_dir / name
    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
    return path


def console_table(study: optuna.Study, objectives: list[Objective]) -> str:
    """The best trial or the Pareto front, one row each, plus the trial counts by state."""
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    head = (f"study {study.study_name}: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    best = winners(study, objectives)
    if not best:
        return head + "\nno complete trial"
    title = "best trial" if len(objectives) == 1 else f"Pareto front ({len(best)} trials)"
    columns = ["trial", *[f"{o.metric} ({o.direction[:3]})" for o in objectives],
               "config_hash", "params"]
    rows = [[str(t.number), *[f"{v:.4g}" for v in t.values],
             (t.user_attrs.get("config_hash") or "")[:12],
             " ".join(f"{k}={_short(v)}" for k, v in t.params.items())] for t in best]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [head, title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)

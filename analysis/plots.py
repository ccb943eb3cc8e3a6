"""The report's figures as PNG files (matplotlib, no display needed).

    from analysis.plots import write_plots
    paths = write_plots(runs, front, progress, out_dir)   # {name: Path}

Every figure is always written, with a "no data" note when there is nothing to draw, so a
report has the same files whatever the runs were; colours stay fixed per technique across
figures.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pandas as pd

# Figure objects, not pyplot: pyplot picks a GUI backend and keeps global figure state;
# a Figure renders through the Agg canvas on headless machines and in CI.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from analysis.records import ACC, USD, as_number
from analysis.tables import complete, metric_label

RANK = "config.technique.r"
LR = "config.optimizer.lr"


def technique_colors(runs: pd.DataFrame) -> dict[str, tuple]:
    labels = sorted(runs["technique"].dropna().unique())
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _points(runs: pd.DataFrame, x: str, y: str = ACC) -> pd.DataFrame:
    """Complete runs with a numeric x and y; `_err` is y's 95% half-interval from its
    recorded stderr (NaN where the record has none)."""
    done = complete(runs)
    if x not in done or y not in done:
        return done.iloc[0:0]
    stderr = (pd.to_numeric(done[f"{y}_stderr"], errors="coerce") if f"{y}_stderr" in done
              else pd.Series(float("nan"), index=done.index))
    done = done.assign(_x=pd.to_numeric(done[x], errors="coerce"),
                       _y=pd.to_numeric(done[y], errors="coerce"), _err=1.96 * stderr)
    return done[done["_x"].notna() & done["_y"].notna()]


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no complete runs with {what}", ha="center", va="center",
            transform=ax.transAxes, color="grey")


def _scatter(ax, points: pd.DataFrame, colors: dict, errors: bool = False) -> None:
    for label, group in points.groupby("technique", sort=True):
        if errors and group["_err"].notna().any():
            ax.errorbar(group["_x"], group["_y"], yerr=group["_err"], fmt="none",
                        ecolor=colors.get(label), alpha=0.6, capsize=3, zorder=1)
        ax.scatter(group["_x"], group["_y"], color=colors.get(label), label=label, alpha=0.8,
                   edgecolors="white", linewidths=0.5, s=40, zorder=2)
    ax.legend(title="technique", fontsize=8, title_fontsize=8)


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def pareto_plot(runs: pd.DataFrame, front: pd.DataFrame, colors: dict, path: Path,
                metric: str = ACC) -> Path:
    """Score against dollars with 95% error bars, coloured by technique; the front drawn and
    labelled."""
    fig, ax = _figure(7, 4.5)
    points = _points(runs, USD, metric)
    if points.empty:
        _no_data(ax, f"{USD} and {metric}")
    else:
        _scatter(ax, points, colors, errors=True)
        ax.step(front[USD], front[metric], where="post", color="black", linewidth=1, zorder=1)
        ax.scatter(front[USD], front[metric], facecolors="none", edgecolors="black", s=110,
                   linewidths=1.2, label="Pareto front")
        for _, run in front.iterrows():
            ax.annotate(f"{run['technique']} {run['config_hash'][:6]}", (run[USD], run[metric]),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.legend(fontsize=8)
        ax.margins(0.12)  # room for the labels of the front's end points
    ax.set(xlabel="cost (USD)", ylabel=metric_label(metric) + " (95% CI)",
           title="Accuracy for the money")
    return _save(fig, path)


def param_plot(runs: pd.DataFrame, column: str, colors: dict, path: Path, xlabel: str,
               log: bool = False, metric: str = ACC) -> Path:
    """The score against one hyperparameter (LoRA rank, learning rate)."""
    fig, ax = _figure(6, 4)
    points = _points(runs, column, metric)
    if points.empty:
        _no_data(ax, column)
    else:
        _scatter(ax, points, colors)
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide
        tried = sorted(points["_x"].unique())
        if len(tried) <= 8:  # a grid of values (ranks 8/16/32): label exactly those
            ax.set_xticks(tried, [f"{v:.0e}" if log else f"{v:g}" for v in tried])
    ax.set(xlabel=xlabel, ylabel=metric_label(metric), title=f"Accuracy against {xlabel}")
    return _save(fig, path)


def progress_plot(progress: pd.DataFrame, path: Path, metric: str = ACC) -> Path:
    """Best score so far over trials, one line per study."""
    fig, ax = _figure(6, 4)
    if progress.empty:
        _no_data(ax, metric)
    else:
        for study, group in progress.groupby("study", sort=True):
            line = ax.step(group["trial"], group["best"], where="post", label=str(study))
            ax.scatter(group["trial"], group["acc"], color=line[0].get_color(), s=12, alpha=0.5)
        ax.legend(title="study", fontsize=8, title_fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=f"{metric_label(metric)} (best so far)",
           title="Search progress")
    return _save(fig, path)


def curves_plot(history: pd.DataFrame, colors: dict, path: Path) -> Path:
    """Training loss (lines) and validation loss (dashed, markers) of every trial against the
    step, one panel per technique so curves of one technique can be compared."""
    labels = sorted(history["technique"].unique()) if len(history) else []
    fig = Figure(figsize=(3.6 * max(len(labels), 1), 3.6))
    axes = fig.subplots(1, max(len(labels), 1), sharey=True, squeeze=False)[0]
    if not labels:
        _no_data(axes[0], "a loss history")
    for ax, label in zip(axes, labels, strict=False):  # one empty panel when no labels
        for chash, run in history[history["technique"] == label].groupby("config_hash"):
            train = run[run["metric"] == "train/loss"]
            val = run[run["metric"] == "eval/loss"]
            line = ax.plot(train["step"], train["value"], color=colors.get(label), alpha=0.7,
                           linewidth=1, label=f"{chash[:6]} train")
            ax.plot(val["step"], val["value"], color=line[0].get_color(), linestyle="--",
                    marker="o", markersize=4, label=f"{chash[:6]} validation")
        ax.set(title=label, xlabel="step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("loss")
    fig.suptitle("Learning curves: training (solid) and validation (dashed) loss")
    return _save(fig, path)


def fields_plot(best: pd.DataFrame, colors: dict, path: Path, fields: list[str]) -> Path:
    """Per-field accuracy of each technique's best run (95% error bars), beside the untuned
    base model: which parts of the answer each technique learnt."""
    fig, ax = _figure(8, 4)
    if best.empty or not fields:
        _no_data(ax, "per-field scores")
        return _save(fig, path)
    rows = [("base model", (0.6, 0.6, 0.6, 1.0), best.iloc[0]["run"], "base/")]
    rows += [(b["technique"], colors.get(b["technique"]), b["run"], "") for _, b in
             best.iterrows()]
    width = 0.8 / len(rows)
    for i, (label, color, run, prefix) in enumerate(rows):
        values = [as_number(run.get(f"{prefix}eval/task/{f}_acc")) for f in fields]
        errors = [1.96 * as_number(run.get(f"eval/task/{f}_acc_stderr")) if not prefix else 0
                  for f in fields]
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(fields))]
        ax.bar(xs, values, width, color=color, label=label, yerr=errors, capsize=2,
               error_kw={"alpha": 0.6})
    ax.set_xticks(range(len(fields)), fields)
    ax.set(ylim=(0, 1.05), ylabel="accuracy", title="Which fields each technique learnt")
    ax.legend(fontsize=8, ncols=min(len(rows), 5))
    return _save(fig, path)


def importance_plot(importance: pd.DataFrame, path: Path) -> Path:
    """How much each hyperparameter decides the first objective, per study."""
    studies = sorted(importance["study"].unique())
    fig = Figure(figsize=(6, 1.2 + 0.45 * max(len(importance), 1)))
    ax = fig.subplots()
    for study in studies:
        part = importance[importance["study"] == study].sort_values("importance")
        ax.barh([f"{study}: {p}" if len(studies) > 1 else p for p in part["param"]],
                part["importance"], label=study)
    ax.set(xlabel="importance (Optuna's default evaluator; sums to 1)",
           title="Hyperparameter importance")
    return _save(fig, path)


def write_plots(runs: pd.DataFrame, front: pd.DataFrame, progress: pd.DataFrame,
                out_dir: Path, metric: str = ACC, best: pd.DataFrame | None = None,
                history: pd.DataFrame | None = None,
                importance: pd.DataFrame | None = None) -> dict[str, Path]:
    """Writes every figure into `out_dir`; returns {name: path} in report order."""
    colors = technique_colors(runs)
    adapters = runs[runs["technique_name"].isin(["lora", "qlora", "dora"])]
    best = best if best is not None else pd.DataFrame(columns=["technique", "run"])
    history = history if history is not None else pd.DataFrame(
        columns=["technique", "config_hash", "step", "metric", "value"])
    fields = [c.split("/")[2][:-4] for c in runs.columns
              if c.startswith("eval/task/") and c.endswith("_acc") and c != "eval/task/field_acc"
              and complete(runs)[c].notna().any()]
    figures = {
        "pareto": pareto_plot(runs, front, colors, out_dir / "pareto.png", metric),
        "curves": curves_plot(history, colors, out_dir / "learning_curves.png"),
        "fields": fields_plot(best, colors, out_dir / "fields.png", fields),
        "rank": param_plot(adapters, RANK, colors, out_dir / "acc_vs_rank.png", "LoRA rank",
                           metric=metric),
        "lr": param_plot(runs, LR, colors, out_dir / "acc_vs_lr.png", "learning rate", log=True,
                         metric=metric),
        "progress": progress_plot(progress, out_dir / "best_so_far.png", metric),
    }
    if importance is not None and len(importance):  # only with enough trials to mean something
        figures["importance"] = importance_plot(importance, out_dir / "importance.png")
    return figures

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

from analysis.records import ACC, USD
from analysis.tables import complete

RANK = "config.technique.r"
LR = "config.optimizer.lr"


def technique_colors(runs: pd.DataFrame) -> dict[str, tuple]:
    labels = sorted(runs["technique"].dropna().unique())
    cmap = matplotlib.colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: cmap(i % cmap.N) for i, label in enumerate(labels)}


def _points(runs: pd.DataFrame, x: str) -> pd.DataFrame:
    """Complete runs with a numeric x and task accuracy."""
    done = complete(runs)
    if x not in done or ACC not in done:
        return done.iloc[0:0]
    done = done.assign(_x=pd.to_numeric(done[x], errors="coerce"),
                       _y=pd.to_numeric(done[ACC], errors="coerce"))
    return done[done["_x"].notna() & done["_y"].notna()]


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no complete runs with {what}", ha="center", va="center",
            transform=ax.transAxes, color="grey")


def _scatter(ax, points: pd.DataFrame, colors: dict) -> None:
    for label, group in points.groupby("technique", sort=True):
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


def pareto_plot(runs: pd.DataFrame, front: pd.DataFrame, colors: dict, path: Path) -> Path:
    """Accuracy against dollars, coloured by technique; the front drawn and labelled."""
    fig, ax = _figure(7, 4.5)
    points = _points(runs, USD)
    if points.empty:
        _no_data(ax, f"{USD} and {ACC}")
    else:
        _scatter(ax, points, colors)
        ax.step(front[USD], front[ACC], where="post", color="black", linewidth=1, zorder=1)
        ax.scatter(front[USD], front[ACC], facecolors="none", edgecolors="black", s=110,
                   linewidths=1.2, label="Pareto front")
        for _, run in front.iterrows():
            ax.annotate(f"{run['technique']} {run['config_hash'][:6]}", (run[USD], run[ACC]),
                        textcoords="offset points", xytext=(6, 6), fontsize=8)
        ax.legend(fontsize=8)
        ax.margins(0.12)  # room for the labels of the front's end points
    ax.set(xlabel="cost (USD)", ylabel="task accuracy", title="Accuracy for the money")
    return _save(fig, path)


def param_plot(runs: pd.DataFrame, column: str, colors: dict, path: Path, xlabel: str,
               log: bool = False) -> Path:
    """Task accuracy against one hyperparameter (LoRA rank, learning rate)."""
    fig, ax = _figure(6, 4)
    points = _points(runs, column)
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
    ax.set(xlabel=xlabel, ylabel="task accuracy", title=f"Accuracy against {xlabel}")
    return _save(fig, path)


def progress_plot(progress: pd.DataFrame, path: Path) -> Path:
    """Best task accuracy so far over trials, one line per study."""
    fig, ax = _figure(6, 4)
    if progress.empty:
        _no_data(ax, ACC)
    else:
        for study, group in progress.groupby("study", sort=True):
            line = ax.step(group["trial"], group["best"], where="post", label=str(study))
            ax.scatter(group["trial"], group["acc"], color=line[0].get_color(), s=12, alpha=0.5)
        ax.legend(title="study", fontsize=8, title_fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="task accuracy (best so far)", title="Search progress")
    return _save(fig, path)


def write_plots(runs: pd.DataFrame, front: pd.DataFrame, progress: pd.DataFrame,
                out_dir: Path) -> dict[str, Path]:
    """Writes every figure into `out_dir`; returns {name: path} in report order."""
    colors = technique_colors(runs)
    adapters = runs[runs["technique_name"].isin(["lora", "qlora", "dora"])]
    return {
        "pareto": pareto_plot(runs, front, colors, out_dir / "pareto.png"),
        "rank": param_plot(adapters, RANK, colors, out_dir / "acc_vs_rank.png", "LoRA rank"),
        "lr": param_plot(runs, LR, colors, out_dir / "acc_vs_lr.png", "learning rate", log=True),
        "progress": progress_plot(progress, out_dir / "best_so_far.png"),
    }

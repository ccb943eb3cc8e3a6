"""The report's numbers: per-technique summary, Pareto front, significance, best-so-far.

Every function takes the runs DataFrame of `analysis.records.load_runs` and returns a
DataFrame (or sentences); `analysis.report` formats them. Only complete runs count towards
scores and costs; pruned and failed runs are counted, not averaged.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from analysis.records import ACC, USD

# Benchmark scores shown next to the task accuracy, with their delta against the base model.
# A closed list: eval/task/<field>_acc and the *_stderr columns are details, not benchmarks.
BENCHMARK = re.compile(r"^eval/(?!task/)[^/]+/(acc|acc_norm|exact_match|ppl)$")
COSTS = ["cost/usd", "cost/device_hours", "perf/tokens_per_s", "mem/peak_gb",
         "params/trainable_share"]
ALPHA = 0.05


def complete(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "complete"]


def benchmark_columns(runs: pd.DataFrame) -> list[str]:
    """`eval/<benchmark>/<score>` columns that some complete run has a value for."""
    done = complete(runs)
    return sorted(c for c in runs.columns if BENCHMARK.match(c) and done[c].notna().any())


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """The column as floats, or all-NaN when no record has it (metrics are optional)."""
    if name not in frame:
        return pd.Series(math.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[name], errors="coerce")


def technique_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per technique label, best task accuracy first.

    Columns: technique, runs, complete, pruned, failed, other (running/incomplete/invalid),
    best_acc and median_acc of `eval/task/acc`, then medians over complete runs of
    `eval/task/acc_delta`, each benchmark score and its `_delta`, the cost columns, and
    best_run (config hash of the most accurate run).
    """
    labelled = runs[runs["technique"].notna()]
    metrics = [f"{ACC}_delta"]
    for bench in benchmark_columns(runs):
        metrics += [bench, f"{bench}_delta"]
    rows = []
    for label, group in labelled.groupby("technique", sort=True):
        done = complete(group)
        acc = _column(done, ACC)
        status = group["status"]
        row = {"technique": label, "runs": len(group),
               "complete": int((status == "complete").sum()),
               "pruned": int((status == "pruned").sum()),
               "failed": int((status == "failed").sum())}
        row["other"] = row["runs"] - row["complete"] - row["pruned"] - row["failed"]
        row["best_acc"] = acc.max()
        row["median_acc"] = acc.median()
        row.update({m: _column(done, m).median() for m in metrics + COSTS})
        row["best_run"] = done.loc[acc.idxmax(), "config_hash"] if acc.notna().any() else None
        rows.append(row)
    columns = ["technique", "runs", "complete", "pruned", "failed", "other", "best_acc",
               "median_acc", *metrics, *COSTS, "best_run"]
    summary = pd.DataFrame(rows, columns=columns)
    return summary.sort_values("best_acc", ascending=False, na_position="last",
                               kind="stable").reset_index(drop=True)


def pareto_mask(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """True where no other point is at most as costly and at least as accurate, and
    strictly better in one of the two. Identical points are all kept."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    no_worse = (cost[None, :] <= cost[:, None]) & (acc[None, :] >= acc[:, None])
    better = (cost[None, :] < cost[:, None]) | (acc[None, :] > acc[:, None])
    return ~(no_worse & better).any(axis=1)


def pareto_front(runs: pd.DataFrame, x: str = USD, y: str = ACC) -> pd.DataFrame:
    """Complete runs on the accuracy-versus-dollars front, cheapest first.

    Columns: technique, `y`, `x`, config_hash, folder. Runs missing either value are left
    out (a run with no price cannot be placed on the cost axis).
    """
    done = complete(runs).assign(**{x: lambda f: _column(f, x), y: lambda f: _column(f, y)})
    done = done[done[x].notna() & done[y].notna()]
    front = done[pareto_mask(done[x].to_numpy(), done[y].to_numpy())]
    front = front.sort_values([x, y], ascending=[True, False], kind="stable")
    return front[["technique", y, x, "config_hash", "folder"]].reset_index(drop=True)


def load_eval(folder: str | Path, task: str = "task") -> dict[str, int] | None:
    """Per-example results `<run>/eval/<task>.jsonl` as {id: correct}; None when absent.
    Malformed lines are skipped: they cannot be paired anyway."""
    path = Path(folder) / "eval" / f"{task}.jsonl"
    if not path.is_file():
        return None
    results = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            results[str(row["id"])] = int(bool(row["correct"]))
        except (ValueError, KeyError, TypeError):
            continue
    return results


def mcnemar(a: dict[str, int], b: dict[str, int]) -> tuple[int, float, float]:
    """(paired examples, accuracy difference a - b in points, exact McNemar p-value).

    The exact test is a two-sided binomial test on the discordant pairs (a right and b
    wrong vs the reverse), which suits the small eval sets a sweep scores each trial on.
    """
    ids = sorted(a.keys() & b.keys())
    a_only = sum(1 for i in ids if a[i] and not b[i])
    b_only = sum(1 for i in ids if b[i] and not a[i])
    if not ids:
        return 0, math.nan, math.nan
    diff = 100.0 * (a_only - b_only) / len(ids)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return len(ids), diff, float(p)


def _p_text(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"  # 0.002 must not read "0.00"


def significance_sentence(name_a: str, name_b: str, n: int, diff: float, p: float) -> str:
    """'dora r16 vs lora r16: +1.2 pts on the task, not significant (p = 0.31, ...)'."""
    if n == 0:
        return f"{name_a} vs {name_b}: no per-example results to pair, not tested."
    verdict = "significant" if p < ALPHA else "not significant"
    return (f"{name_a} vs {name_b}: {diff:+.1f} pts on the task, {verdict} ({_p_text(p)}, "
            f"exact McNemar test, {n} paired examples).")


def top_runs(runs: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """The most accurate complete run of each technique, best first, at most `top`."""
    done = complete(runs).assign(**{ACC: lambda f: _column(f, ACC)})
    done = done[done[ACC].notna()].sort_values(ACC, ascending=False, kind="stable")
    return done.drop_duplicates("technique").head(top)


def significance(runs: pd.DataFrame, top: int = 5, task: str = "task") -> pd.DataFrame:
    """The best run against each other technique's best run, paired on per-example results.

    Columns: a, b, n, diff_pts, p, significant, sentence.
    """
    best = top_runs(runs, top)
    rows = []
    if len(best) >= 2:
        leader = best.iloc[0]
        a = load_eval(leader["folder"], task)
        for _, other in best.iloc[1:].iterrows():
            b = load_eval(other["folder"], task)
            n, diff, p = mcnemar(a, b) if a is not None and b is not None else (0, math.nan,
                                                                                 math.nan)
            rows.append({"a": leader["technique"], "b": other["technique"], "n": n,
                         "diff_pts": diff, "p": p, "significant": bool(n and p < ALPHA),
                         "sentence": significance_sentence(leader["technique"],
                                                           other["technique"], n, diff, p)})
    return pd.DataFrame(rows, columns=["a", "b", "n", "diff_pts", "p", "significant",
                                       "sentence"])


def best_so_far(runs: pd.DataFrame, studies: pd.DataFrame) -> pd.DataFrame:
    """Best task accuracy after each finished trial, per study.

    From the sweeper's `study.csv` when there is one (trial order = trial number, accuracy
    from the trial's record, else its first objective value); otherwise complete records
    in `created_at` order, grouped by sweep ("ad-hoc" for runs outside a sweep).
    Columns: study, trial, acc, best.
    """
    if len(studies):
        done = studies[studies["state"].str.upper().str.endswith("COMPLETE")]
        acc_by_hash = complete(runs).set_index("config_hash")[ACC] if ACC in runs else {}
        acc = done["config_hash"].map(lambda h: acc_by_hash.get(h, math.nan))
        frame = pd.DataFrame({"study": done["study"], "trial": done["number"],
                              "acc": acc.fillna(pd.to_numeric(done["value"], errors="coerce"))})
    else:
        done = complete(runs).sort_values("created_at", kind="stable")
        frame = pd.DataFrame({"study": done["sweep"].fillna("ad-hoc"),
                              "acc": _column(done, ACC)})
        frame["trial"] = frame.groupby("study").cumcount()
    frame = frame[frame["acc"].notna()].sort_values(["study", "trial"], kind="stable")
    frame["best"] = frame.groupby("study")["acc"].cummax()
    return frame[["study", "trial", "acc", "best"]].reset_index(drop=True)

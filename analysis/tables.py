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

from analysis import stats
from analysis.records import ACC, USD, as_number

# Benchmark scores shown next to the task accuracy, with their delta against the base model.
# A closed list: eval/task/<field>_acc and the *_stderr columns are details, not benchmarks.
BENCHMARK = re.compile(r"^eval/(?!task/)[^/]+/(acc|acc_norm|exact_match|ppl)$")
COSTS = ["cost/usd", "cost/device_hours", "perf/tokens_per_s", "mem/peak_gb",
         "params/trainable_share"]


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


def technique_summary(runs: pd.DataFrame, metric: str = ACC) -> pd.DataFrame:
    """One row per technique label, best score first.

    Columns: technique, runs, complete, pruned, failed, other (running/incomplete/invalid),
    best_acc and median_acc of `metric` (the report's objective), then medians over complete
    runs of `<metric>_delta`, each benchmark score and its `_delta`, the cost columns, and
    best_run (config hash of the best-scoring run).
    """
    labelled = runs[runs["technique"].notna()]
    metrics = [f"{metric}_delta"]
    for bench in benchmark_columns(runs):
        metrics += [bench, f"{bench}_delta"]
    rows = []
    for label, group in labelled.groupby("technique", sort=True):
        done = complete(group)
        acc = _column(done, metric)
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


FIELD_ACC = "eval/task/field_acc"  # partial credit: the share of an answer's fields right
METRIC_LABELS = {ACC: "exact match", FIELD_ACC: "mean field accuracy"}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def objective_metric(runs: pd.DataFrame, metric: str | None = None) -> str:
    """The score the report ranks by: `metric` when given, else mean field accuracy where
    the runs have it (finer-grained: it tells apart answers exact match calls equally wrong),
    else exact match."""
    if metric:
        return metric
    done = complete(runs)
    return FIELD_ACC if _column(done, FIELD_ACC).notna().any() else ACC


def example_key(metric: str) -> tuple[str, str]:
    """(eval option, per-example key) of `eval/<option>/<name>`: `correct` holds the
    primary score (`acc`), other scores keep their name."""
    _, option, name = metric.split("/", 2)
    return option, "correct" if name == "acc" else name


def load_eval(folder: str | Path, task: str = "task", key: str = "correct"
              ) -> dict[str, float] | None:
    """Per-example scores `<run>/eval/<task>.jsonl` as {id: score}; None when absent.
    Malformed lines and rows without `key` are skipped: they cannot be paired anyway."""
    path = Path(folder) / "eval" / f"{task}.jsonl"
    if not path.is_file():
        return None
    results = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            value = row[key]
            results[str(row["id"])] = float(value) if key != "correct" else float(bool(value))
        except (ValueError, KeyError, TypeError):
            continue
    return results or None


def run_scores(folder: object, metric: str) -> dict[str, float] | None:
    """A run's per-example scores on `metric` ({id: score}), None when it has none."""
    option, key = example_key(metric)
    return load_eval(folder, option, key) if isinstance(folder, str) else None


def run_interval(run: pd.Series, metric: str, scores: dict[str, float] | None
                 ) -> stats.Interval:
    """From the run's per-example scores, else its recorded stderr, else the value alone."""
    if scores:
        return stats.interval(list(scores.values()))
    value = as_number(run.get(metric))
    stderr = as_number(run.get(f"{metric}_stderr"))
    low, high = stats.normal_interval(value, stderr) if math.isfinite(stderr) else (math.nan,
                                                                                    math.nan)
    return stats.Interval(value, low, high, stderr, 0)


def technique_best(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The best complete run of each technique on `metric`, best first, with its interval.

    Ties on the score go to the cheaper run (the one a user would pick), then to the config
    hash, so the choice never depends on file order. Columns: technique, config_hash,
    folder, value, low, high, stderr, n (per-example scores; 0: from the record), usd,
    scores (the per-example scores, for the paired tests) and the run's row under `run`.
    """
    done = complete(runs).assign(_score=lambda f: _column(f, metric),
                                 _usd=lambda f: _column(f, USD))
    done = done[done["_score"].notna()]
    done = done.sort_values(["_score", "_usd", "config_hash"], ascending=[False, True, True],
                            na_position="last", kind="stable")
    rows = []
    for _, run in done.drop_duplicates("technique").iterrows():
        scores = run_scores(run["folder"], metric)
        ci = run_interval(run, metric, scores)
        rows.append({"technique": run["technique"], "config_hash": run["config_hash"],
                     "folder": run["folder"], "value": run["_score"], "low": ci.low,
                     "high": ci.high, "stderr": ci.stderr, "n": ci.n, "usd": run["_usd"],
                     "scores": scores, "run": run.drop(["_score", "_usd"])})
    return pd.DataFrame(rows, columns=["technique", "config_hash", "folder", "value", "low",
                                       "high", "stderr", "n", "usd", "scores", "run"])


def _p_text(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"  # 0.002 must not read "0.00"


def pair_sentence(row: dict, metric: str) -> str:
    """'lora r16 vs full: +8.2 pts of exact match (95% CI +3.1 to +13.3), significant ...'."""
    a, b = row["a"], row["b"]
    if not row["n"]:
        return f"{a} vs {b}: no per-example results to pair, not tested."
    verdict = "significant" if row["significant"] else "not significant"
    text = (f"{a} vs {b}: {row['diff_pts']:+.1f} pts of {metric_label(metric)} (95% CI "
            f"{row['low_pts']:+.1f} to {row['high_pts']:+.1f}), {verdict} ({_p_text(row['p'])}"
            f", Holm-adjusted {_p_text(row['p_holm']).replace('p ', '', 1)}; {row['method']} "
            f"test, {row['n']} paired examples)")
    if not row["significant"]:
        needed = row["needed"]
        text += (f"; about {needed:,} paired examples would detect a difference this size "
                 "at 80% power" if needed else "; no difference at all on these examples")
    return text + "."


PAIR_COLUMNS = ["a", "b", "run_a", "run_b", "n", "diff_pts", "low_pts", "high_pts", "p",
                "p_holm", "significant", "method", "needed", "sentence"]


def pairwise(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Every pair of techniques' best runs, paired example by example on `metric`.

    a is the better-ranked run of each pair; p_holm corrects for all the pairs at once and
    decides `significant` (α = stats.ALPHA). `needed`: paired examples that would detect the
    observed difference at 80% power with the same correction (stats.examples_needed).
    """
    scores = list(best["scores"])
    rows = []
    for i in range(len(best)):
        for j in range(i + 1, len(best)):
            a, b = best.iloc[i], best.iloc[j]
            test = (stats.paired_test(scores[i], scores[j]) if scores[i] and scores[j]
                    else stats.paired_test({}, {}))
            rows.append({"a": a["technique"], "b": b["technique"], "run_a": a["config_hash"],
                         "run_b": b["config_hash"], "n": test.n, "diff_pts": 100 * test.diff,
                         "low_pts": 100 * test.low, "high_pts": 100 * test.high, "p": test.p,
                         "method": test.method, "_sd": test.sd, "_diff": test.diff})
    adjusted = stats.holm([r["p"] for r in rows])
    for row, p_holm in zip(rows, adjusted, strict=True):
        row["p_holm"] = p_holm
        row["significant"] = bool(row["n"] and p_holm < stats.ALPHA)
        row["needed"] = stats.examples_needed(row.pop("_diff"), row.pop("_sd"), tests=len(rows))
        row["sentence"] = pair_sentence(row, metric)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS).astype({"needed": object})


def verdict(best: pd.DataFrame, pairs: pd.DataFrame, metric: str) -> dict:
    """The answer: a winner only when it beats every other technique significantly; else the
    top group (the leader and every technique it does not beat significantly), the cheapest
    of that group, and the paired examples it would take to tell the leader from the next.

    Returns {winner, top_group, best_for_money, needed, sentences}.
    """
    label = metric_label(metric)
    out = {"winner": None, "top_group": [], "best_for_money": None, "needed": None,
           "sentences": []}
    if best.empty:
        out["sentences"].append(f"No complete run has a {label} score: nothing to rank.")
        return out
    leader = best.iloc[0]
    beaten = set(pairs.loc[(pairs["a"] == leader["technique"]) & pairs["significant"], "b"])
    group = [t for t in best["technique"] if t == leader["technique"] or t not in beaten]
    out["top_group"] = group
    tops = best[best["technique"].isin(group)]
    cheapest = tops.sort_values("usd", kind="stable").iloc[0]
    out["best_for_money"] = cheapest["technique"]

    def score(row) -> str:
        return f"{row['value']:.3f} [{row['low']:.3f}, {row['high']:.3f}]"

    if len(best) == 1:
        out["sentences"].append(f"Only {leader['technique']} was scored ({label} "
                                f"{score(leader)}): nothing to compare it with.")
        return out
    if group == [leader["technique"]]:
        out["winner"] = leader["technique"]
        out["sentences"].append(
            f"Winner: {leader['technique']}, {label} {score(leader)} (95% CI), at "
            f"${leader['usd']:.3g} a run; it beats every other technique, each difference "
            f"significant at α = {stats.ALPHA} after Holm's correction.")
    else:
        first = pairs[(pairs["a"] == leader["technique"]) & (pairs["b"] == group[1])].iloc[0]
        out["needed"] = None if pd.isna(first["needed"]) else int(first["needed"])
        more = (f"telling a difference of {first['diff_pts']:.1f} pts apart would take about "
                f"{out['needed']:,} paired examples (this comparison had {first['n']})"
                if out["needed"] else "their mean scores are equal, so there is no margin to "
                "plan a larger test for")
        out["sentences"].append(
            f"No single winner: {', '.join(group)} are statistically indistinguishable on "
            f"{label} (the best, {leader['technique']}, {score(leader)}, leads "
            f"{group[1]} by {first['diff_pts']:.1f} pts, {_p_text(first['p'])}); {more}.")
        out["sentences"].append(
            f"Best for the money: {cheapest['technique']}, the cheapest of those "
            f"(${cheapest['usd']:.3g} a run against ${tops['usd'].max():.3g} for the "
            f"dearest), {label} {score(cheapest)}.")
    separated = pairs[pairs["significant"]]
    if len(separated):
        out["sentences"].append("Separated at α = 0.05 (Holm): " + "; ".join(
            f"{r.a} beats {r.b} by {r.diff_pts:.1f} pts ({_p_text(r.p_holm)})"
            for r in separated.itertuples()) + ".")
    else:
        out["sentences"].append("No pair of techniques differs significantly at α = 0.05.")
    return out


def best_so_far(runs: pd.DataFrame, studies: pd.DataFrame, metric: str = ACC) -> pd.DataFrame:
    """Best `metric` after each finished trial, per study.

    From the sweeper's `study.csv` when there is one (trial order = trial number, accuracy
    from the trial's record, else its first objective value); otherwise complete records
    in `created_at` order, grouped by sweep ("ad-hoc" for runs outside a sweep).
    Columns: study, trial, acc, best.
    """
    if len(studies):
        done = studies[studies["state"].str.upper().str.endswith("COMPLETE")]
        acc_by_hash = complete(runs).set_index("config_hash")[metric] if metric in runs else {}
        acc = done["config_hash"].map(lambda h: acc_by_hash.get(h, math.nan))
        frame = pd.DataFrame({"study": done["study"], "trial": done["number"],
                              "acc": acc.fillna(pd.to_numeric(done["value"], errors="coerce"))})
    else:
        done = complete(runs).sort_values("created_at", kind="stable")
        frame = pd.DataFrame({"study": done["sweep"].fillna("ad-hoc"),
                              "acc": _column(done, metric)})
        frame["trial"] = frame.groupby("study").cumcount()
    frame = frame[frame["acc"].notna()].sort_values(["study", "trial"], kind="stable")
    frame["best"] = frame.groupby("study")["acc"].cummax()
    return frame[["study", "trial", "acc", "best"]].reset_index(drop=True)


MIN_IMPORTANCE_TRIALS = 8  # fewer: the top-quantile split the evaluator makes is a trial or two


def importances(root: str | Path, sweep: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Hyperparameter importance of the first objective (Optuna's default evaluator)
    for every study in a `study.db` under `root` with enough complete trials.

    Returns (rows of study, param, importance; notes on studies left out and why).
    """
    import optuna

    rows, notes = [], []
    for db in sorted(Path(root).glob("**/study.db")):
        storage = f"sqlite:///{db.resolve()}"
        try:
            summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        except Exception as exc:  # a locked or foreign database must not kill the report
            notes.append(f"{db}: not readable as an Optuna study ({exc}).")
            continue
        for summary in summaries:
            if sweep and summary.study_name != sweep:
                continue
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            done = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
            if len(done) < MIN_IMPORTANCE_TRIALS:
                notes.append(f"{summary.study_name}: {len(done)} complete trials; hyperparameter "
                             f"importance needs at least {MIN_IMPORTANCE_TRIALS} "
                             "(raise hydra.sweeper.n_trials).")
                continue
            # Optuna 5's default evaluator (PED-ANOVA) explains what makes the target *low*.
            sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
            try:
                scores = optuna.importance.get_param_importances(
                    study, target=lambda t, sign=sign: sign * t.values[0])
            except (ValueError, RuntimeError) as exc:  # e.g. no parameter varies
                notes.append(f"{summary.study_name}: importance not computed ({exc}).")
                continue
            rows += [{"study": summary.study_name, "param": k, "importance": v}
                     for k, v in scores.items()]
    return pd.DataFrame(rows, columns=["study", "param", "importance"]), notes

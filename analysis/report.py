"""`harness-report`: which technique gives the best accuracy for the money.

    harness-report outputs                       # every record under outputs/ -> outputs/reports/
    harness-report outputs/sweeps/smoke --out /tmp/r --technique lora --since 2026-01-01

Reads records only (never trains) and writes into --out: report.md, report.html (one
self-contained file, plots embedded), runs.csv and runs.parquet (one row per run, every
config and metric column) and the plots as PNG.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import pandas as pd

from analysis import plots, render, stats, tables
from analysis.records import ACC, USD, load_history, load_runs, load_studies
from harness.config.files import atomic_write_text

TITLE = "Fine-tuning report"
PROBLEMS = ("incomplete", "invalid")


def summary_columns(summary: pd.DataFrame, metric: str = ACC) -> dict[str, tuple[str, str]]:
    """Display headers and formats of the per-technique table, benchmarks included."""
    label = tables.metric_label(metric)
    columns = {"technique": ("technique", "text"), "complete": ("complete", "integer"),
               "pruned": ("pruned", "integer"), "failed": ("failed", "integer"),
               "other": ("other", "integer"), "best_acc": (f"best {label}", "score"),
               "median_acc": (f"median {label}", "score"),
               f"{metric}_delta": (f"{label} Δ base", "delta")}
    for column in summary.columns:
        if tables.BENCHMARK.match(column):
            _, bench, name = column.split("/")
            columns[column] = (f"{bench} {name}", "general" if name == "ppl" else "score")
            columns[f"{column}_delta"] = (f"{bench} Δ base", "delta")
    # A delta no run has (base model not scored) would be a column of dashes.
    columns = {k: v for k, v in columns.items()
               if not k.endswith("_delta") or summary[k].notna().any()}
    columns.update({"cost/usd": ("USD", "dollars"), "cost/device_hours": ("device-h", "general"),
                    "perf/tokens_per_s": ("tokens/s", "integer"),
                    "mem/peak_gb": ("peak GB", "general"),
                    "params/trainable_share": ("trainable", "percent"),
                    "best_run": ("best run", "hash")})
    return columns


def pareto_columns(metric: str) -> dict[str, tuple[str, str]]:
    return {"technique": ("technique", "text"), metric: (tables.metric_label(metric), "score"),
            USD: ("USD", "dollars"), "config_hash": ("config hash", "hash"),
            "folder": ("folder", "text")}
RUN_COLUMNS = {"config_hash": ("config hash", "hash"), "technique": ("technique", "text"),
               "status": ("status", "text"), ACC: ("exact match", "score"),
               USD: ("USD", "dollars"), "sweep": ("sweep", "text"),
               "folder": ("folder", "text"), "reproduce": ("reproduce", "text"),
               "command": ("command", "text"), "reason": ("error / reason", "text")}
PROBLEM_COLUMNS = {"folder": ("folder", "text"), "status": ("status", "text"),
                   "reason": ("reason", "text")}


def ordered_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Complete runs first, most accurate first; then pruned, failed, the rest."""
    rank = {"complete": 0, "pruned": 1, "failed": 2, "running": 3}
    acc = pd.to_numeric(runs[ACC], errors="coerce") if ACC in runs else 0.0
    keyed = runs.assign(_rank=runs["status"].map(rank).fillna(4), _acc=acc)
    return keyed.sort_values(["_rank", "_acc"], ascending=[True, False], kind="stable")


def headline(runs: pd.DataFrame, answer: dict, source: Path) -> list[str]:
    counts = runs["status"].value_counts()
    parts = ", ".join(f"{counts[s]} {s}" for s in counts.index)
    return [f"{len(runs)} runs under {source} ({parts}); written "
            f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.", *answer["sentences"]]


def best_table(best: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The best run of each technique with every score's 95% interval, as text."""
    def with_ci(value: float, low: float, high: float) -> str:
        if pd.isna(value):
            return render.MISSING
        return f"{value:.3f} [{low:.3f}, {high:.3f}]" if pd.notna(low) else f"{value:.3f}"

    rows = []
    for _, b in best.iterrows():
        run = b["run"]
        row = {"technique": b["technique"],
               tables.metric_label(metric): with_ci(b["value"], b["low"], b["high"])}
        for column, header in ((ACC, "exact match"), ("eval/mmlu/acc", "MMLU"),
                               ("eval/perplexity/ppl", "perplexity")):
            if column == metric or column not in run or pd.isna(run[column]):
                continue
            if column == "eval/perplexity/ppl":  # not a mean of per-example scores
                low, high = stats.normal_interval(run[column],
                                                  run.get(f"{column}_stderr", float("nan")))
            else:  # Wilson from the per-example results where the run has them
                ci = tables.run_interval(run, column, tables.run_scores(b["folder"], column))
                low, high = ci.low, ci.high
            row[header] = with_ci(run[column], low, high)
            delta = run.get(f"{column}_delta")
            row[f"{header} Δ base"] = render.MISSING if pd.isna(delta) else f"{delta:+.3f}"
        row["USD"] = render.MISSING if pd.isna(b["usd"]) else f"${b['usd']:.3g}"
        row["run"] = str(b["config_hash"])[:12]
        rows.append(row)
    return pd.DataFrame(rows).fillna(render.MISSING)


def base_line(runs: pd.DataFrame, metric: str) -> str | None:
    """The untuned base model's scores, as every trial's record carries them."""
    done = runs[runs["status"] == "complete"]
    names = {metric: tables.metric_label(metric), ACC: "exact match", "eval/mmlu/acc": "MMLU",
             "eval/perplexity/ppl": "perplexity"}
    parts = []
    for column, name in names.items():
        base = f"base/{column}"
        if base in done and done[base].notna().any():
            part = f"{name} {done[base].dropna().iloc[0]:.3f}"
            if part not in parts:
                parts.append(part)
    return ("Untuned base model: " + ", ".join(parts) + "; every Δ base below is against it."
            if parts else None)


def relative_folders(frame: pd.DataFrame, source: Path) -> pd.DataFrame:
    """Run folders relative to the report's source: the absolute prefix is the same on
    every row and pushes the useful part off the page."""
    def rel(folder: object) -> object:
        return os.path.relpath(str(folder), source) if isinstance(folder, str) else folder
    return frame.assign(folder=frame["folder"].map(rel))


def build_blocks(runs: pd.DataFrame, source: Path, figures: dict[str, Path],
                 parts: dict[str, pd.DataFrame]) -> list[render.Block]:
    """The report's content, in reading order."""
    summary, pairs, metric = parts["summary"], parts["pairs"], parts["metric"]
    front = relative_folders(parts["front"], source)
    runs = relative_folders(runs, source)
    blocks: list[render.Block] = [("h1", TITLE)]
    if runs.empty:
        return blocks + [("p", f"No runs found under {source}.")]
    blocks += [("p", line) for line in headline(runs, parts["answer"], source)]
    base = base_line(runs, metric)
    blocks += [("p", base)] if base else []
    blocks += [
        ("h2", "Best run of each technique"),
        ("p", f"Ranked by {tables.metric_label(metric)} on the held-out task, each score with "
              "its 95% interval (Wilson for 0/1 scores, Student's t for partial credit, ±1.96 "
              "stderr for perplexity); ties go to the cheaper run."),
        ("table", best_table(parts["best"], metric)),
        ("h2", "Techniques"),
        ("p", "One row per technique. Scores and costs are medians over complete runs; "
              "Δ base is the change against the untuned base model."),
        ("table", render.display(summary, summary_columns(summary, metric))),
        ("h2", "Accuracy for the money: the Pareto front"),
        ("p", "Complete runs that no other run beats on both task accuracy and dollars."),
        ("table", render.display(front, pareto_columns(metric))),
        ("img", ("Score against dollars, 95% error bars; the Pareto front circled",
                 figures["pareto"])),
        ("img", ("Per-field accuracy of each technique's best run, beside the base model",
                 figures["fields"])),
        ("h2", "Which differences are real?"),
        ("p", "Every pair of techniques' best runs, paired example by example on the held-out "
              "task (exact McNemar test for 0/1 scores, paired permutation test otherwise); "
              "p-values Holm-corrected over all pairs, α = 0.05."),
        ("ul", list(pairs["sentence"])),
        ("h2", "Learning curves"),
        ("img", ("Training and validation loss of every trial, per technique",
                 figures["curves"])),
        ("h2", "Hyperparameters and search progress"),
        ("img", ("Task accuracy against LoRA rank (adapter runs)", figures["rank"])),
        ("img", ("Task accuracy against learning rate", figures["lr"])),
        ("img", ("Best score so far, per study", figures["progress"])),
        *([("img", ("Hyperparameter importance of the first objective", figures["importance"]))]
          if "importance" in figures else []),
        *[("p", note) for note in parts.get("importance_notes", [])],
        ("h2", "Runs"),
        ("p", "Every run with its config hash, folder and the command that reproduces it."),
        ("table", render.display(ordered_runs(runs), RUN_COLUMNS)),
    ]
    problems = runs[runs["status"].isin(PROBLEMS)]
    if len(problems):
        blocks += [("h2", "Records that could not be used"),
                   ("table", render.display(problems, PROBLEM_COLUMNS))]
    return blocks


def parquet_safe(runs: pd.DataFrame) -> pd.DataFrame:
    """Columns holding mixed Python types (`offline: auto` next to `offline: true`) as text:
    Parquet needs one type per column."""
    runs = runs.copy()
    for column in runs.select_dtypes(include="object").columns:
        kinds = {type(v) for v in runs[column] if v is not None and not pd.isna(v)}
        if len(kinds) > 1:
            runs[column] = runs[column].map(lambda v: None if v is None or pd.isna(v) else str(v))
    return runs


def summary_json(best: pd.DataFrame, pairs: pd.DataFrame, answer: dict, metric: str) -> dict:
    """The answer for scripts and CI: per technique its best run, every pairwise test."""
    def num(value):
        return None if value is None or pd.isna(value) else float(value)

    return {
        "objective": metric, "alpha": stats.ALPHA, "confidence": stats.CONFIDENCE,
        "winner": answer["winner"], "top_group": answer["top_group"],
        "best_for_money": answer["best_for_money"], "examples_needed": answer["needed"],
        "techniques": [{"technique": b["technique"], "best_run": b["config_hash"],
                        "value": num(b["value"]), "ci_low": num(b["low"]),
                        "ci_high": num(b["high"]), "stderr": num(b["stderr"]),
                        "n": int(b["n"]), "cost_usd": num(b["usd"])}
                       for _, b in best.iterrows()],
        "pairwise": [{"a": r["a"], "b": r["b"], "run_a": r["run_a"], "run_b": r["run_b"],
                      "n": int(r["n"]), "diff": num(r["diff_pts"] / 100),
                      "ci_low": num(r["low_pts"] / 100), "ci_high": num(r["high_pts"] / 100),
                      "p": num(r["p"]), "p_holm": num(r["p_holm"]),
                      "significant": bool(r["significant"]), "method": r["method"],
                      "examples_needed": None if pd.isna(r["needed"]) else int(r["needed"])}
                     for _, r in pairs.iterrows()],
    }


def write_report(source: str | Path, out: str | Path | None = None, sweep: str | None = None,
                 technique: str | None = None, since: str | None = None,
                 metric: str | None = None) -> dict[str, Path]:
    """Loads every record under `source` and writes the report; returns {file kind: path}."""
    source = Path(source)
    out_dir = Path(out) if out else source / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(source, sweep=sweep, technique=technique, since=since)
    metric = tables.objective_metric(runs, metric)
    best = tables.technique_best(runs, metric)
    pairs = tables.pairwise(best, metric)
    answer = tables.verdict(best, pairs, metric)
    parts = {"summary": tables.technique_summary(runs, metric), "metric": metric, "best": best,
             "front": tables.pareto_front(runs, y=metric), "pairs": pairs, "answer": answer}
    progress = tables.best_so_far(runs, load_studies(source, sweep=sweep), metric)
    importance, parts["importance_notes"] = tables.importances(source, sweep)
    figures = plots.write_plots(runs, parts["front"], progress, out_dir, metric, best,
                                load_history(runs), importance)
    blocks = build_blocks(runs, source, figures, parts)
    written = {"md": out_dir / "report.md", "html": out_dir / "report.html",
               "csv": out_dir / "runs.csv", "parquet": out_dir / "runs.parquet",
               "summary": out_dir / "summary.json", **figures}
    atomic_write_text(written["md"], render.to_markdown(blocks))
    atomic_write_text(written["html"], render.to_html(blocks, TITLE))
    atomic_write_text(written["summary"], json.dumps(summary_json(best, pairs, answer, metric),
                                                     indent=1) + "\n")
    atomic_write_text(written["csv"], runs.to_csv(index=False))
    parquet_safe(runs).to_parquet(written["parquet"], index=False)
    return written


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="harness-report", description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="outputs dir or sweep dir (searched for "
                        "**/record.json)")
    parser.add_argument("--out", type=Path, help="report folder (default: SOURCE/reports)")
    parser.add_argument("--sweep", help="only runs of this study (record sweep.study_name)")
    parser.add_argument("--technique", help="only this technique: name (lora) or label (lora r16)")
    parser.add_argument("--metric", help="score to rank by (default: eval/task/field_acc "
                        "where runs have it, else eval/task/acc)")
    parser.add_argument("--since", help="only runs created on or after this date (YYYY-MM-DD)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.source.is_dir():
        print(f"harness-report: {args.source} is not a folder", file=sys.stderr)
        return 2
    if args.since:
        try:
            pd.Timestamp(args.since)
        except ValueError:
            print(f"harness-report: --since {args.since!r} is not a date (YYYY-MM-DD)",
                  file=sys.stderr)
            return 2
    written = write_report(args.source, args.out, args.sweep, args.technique, args.since,
                           args.metric)
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

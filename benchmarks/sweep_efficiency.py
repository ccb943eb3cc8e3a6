"""Sweep efficiency: the same 12-trial search with and without pruning, then a memoized re-run.

    python -m benchmarks.sweep_efficiency [--n-trials 12] [--seeds 7 8 ... 18]

Runs `harness-sweep pruning_benchmark` (sweeps/pruning_benchmark.yaml: learning rate,
schedule and warmup of a small model on the demo task, the learning-curve pruner on the
validation loss) in fresh output folders of one invocation: with pruning and without
(`hydra.sweeper.pruner.name=none`) for each TPE sampler seed, then the first seed's pruned
sweep's command once more (every trial memoized from its record). Compute is the training
tokens every trial spent, pruned ones included (their records keep what they ran before they
stopped). Writes the section `sweep-efficiency` of BENCHMARKS.md; the other pruner settings
tried are recorded, dated, below that section.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from benchmarks.common import ROOT, machine, table, write_section

SAVING_TARGET, BEST_TOLERANCE_PCT = 0.40, 1.0
SWEEP = "pruning_benchmark"
OBJECTIVE = "eval/loss"  # minimized; "within 1 point" read as within 1% of the best loss


def sweep(out: Path, n_trials: int, *overrides: str) -> float:
    """Runs the sweep into `out`; returns its wall seconds."""
    cmd = [str(Path(sys.executable).parent / "harness-sweep"), SWEEP, f"paths.output_dir={out}",
           f"hydra.sweeper.n_trials={n_trials}", f"hydra.sweep.dir={out}/multirun", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def summarize(out: Path, wall: float) -> dict:
    """Trials by state, training tokens and seconds spent, best objective (in points)."""
    recs = [json.loads(p.read_text()) for p in (out / "runs").glob("*/record.json")]
    metrics = [r.get("metrics") or {} for r in recs]
    best = min((m[OBJECTIVE] for r, m in zip(recs, metrics, strict=True)
                if r["status"] == "complete" and OBJECTIVE in m), default=float("nan"))
    return {
        "trials": len(recs),
        "complete": sum(r["status"] == "complete" for r in recs),
        "pruned": sum(r["status"] == "pruned" for r in recs),
        "tokens": sum(m.get("perf/train_tokens", 0.0) for m in metrics),
        "steps": sum(m.get("train/steps", 0.0) for m in metrics),
        "train_s": sum(m.get("cost/train_s", 0.0) for m in metrics),
        "best": best,
        "wall_s": wall,
    }


def pruner_label() -> str:
    """The shipped sweep's pruner as `name k=v ...`, read from sweeps/<SWEEP>.yaml."""
    spec = dict(OmegaConf.load(ROOT / "sweeps" / f"{SWEEP}.yaml").hydra.sweeper.pruner)
    return " ".join([str(spec.pop("name")), *(f"{k}={v}" for k, v in spec.items())])


def compare(pruned: dict, full: dict) -> tuple[float, float]:
    """(share of training tokens pruning saved, best-objective gap: > 0 = pruning's best is
    worse, as a fraction of the unpruned best)."""
    return 1 - pruned["tokens"] / full["tokens"], (pruned["best"] - full["best"]) / full["best"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-trials", type=int, default=12)
    # 7-12: the seeds the pruner was designed on (replaying their recorded curves); 13-18 held out
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(7, 19)),
                        help="TPE sampler seeds: one pruned and one unpruned sweep each")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    results = []
    for seed in args.seeds:
        seeded = f"hydra.sweeper.sampler.seed={seed}"
        pruned_dir, full_dir = tmp / f"pruned-{seed}", tmp / f"unpruned-{seed}"
        pruned = summarize(pruned_dir, sweep(pruned_dir, args.n_trials, seeded))
        full = summarize(full_dir, sweep(full_dir, args.n_trials, seeded,
                                         "hydra.sweeper.pruner.name=none"))
        print(json.dumps({"seed": seed, "pruned": pruned, "unpruned": full}))
        results.append((seed, pruned, full))

    seed, pruned, _ = results[0]
    pruned_dir = tmp / f"pruned-{seed}"
    mtimes = {p: p.stat().st_mtime_ns for p in (pruned_dir / "runs").glob("*/record.json")}
    rerun_wall = sweep(pruned_dir, args.n_trials, f"hydra.sweeper.sampler.seed={seed}")
    untouched = all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    rerun = summarize(pruned_dir, rerun_wall)
    print(json.dumps({"rerun_wall_s": rerun_wall}))

    rows, gaps = [], []
    for seed, pr, fu in results:
        saving, gap = compare(pr, fu)
        gaps.append(100 * gap)
        for name, s in ((f"pruned ({pruner_label()})", pr), ("no pruning", fu)):
            rows.append([seed, name, s["trials"], s["complete"], s["pruned"], f"{s['steps']:.0f}",
                         f"{s['tokens']:,.0f}", f"{s['train_s']:.0f}", f"{s['wall_s']:.0f}",
                         f"{s['best']:.4f}",
                         f"{saving:.0%} less, best {100 * gap:+.2f}%" if s is pr else ""])
    rows.append([results[0][0], "re-run of the pruned sweep (memoized)", rerun["trials"], "-", "-",
                 "0", "0", "0", f"{rerun_wall:.0f}", f"{rerun['best']:.4f}", ""])
    saving = 1 - sum(p["tokens"] for _, p, _ in results) / sum(f["tokens"] for *_, f in results)
    mean_gap = sum(gaps) / len(gaps)
    within = sum(g <= BEST_TOLERANCE_PCT for g in gaps)
    seeds = ", ".join(map(str, args.seeds))
    body = (
        "### Sweep efficiency: pruning and memoization\n\n"
        f"`python -m benchmarks.sweep_efficiency` — `harness-sweep {SWEEP}` "
        f"(sweeps/{SWEEP}.yaml), {args.n_trials} trials each, with and without pruning for each "
        f"TPE seed ({seeds}: one seed's best of {args.n_trials} is a noisy sample); objective "
        f"`{OBJECTIVE}` (final validation loss, minimized); tokens are the non-pad training "
        "tokens of every trial, pruned ones included.\n"
        f"Machine: {machine()}\n\n"
        + table(["seed", "sweep", "trials", "complete", "pruned", "steps", "training tokens",
                 "train s", "wall s", "best eval/loss", "pruned vs unpruned"], rows)
        + "\n\n"
        + table(["target", "measured", "verdict"], [
            [f"pruning spends >= {SAVING_TARGET:.0%} less training compute",
             f"{saving:.0%} less (all seeds' tokens)",
             "MET" if saving >= SAVING_TARGET else "MISSED"],
            [f"... at the same best objective (every seed within {BEST_TOLERANCE_PCT:g}% of its "
             "unpruned best loss, or better)",
             f"{within} of {len(gaps)} seeds within {BEST_TOLERANCE_PCT:g}% "
             f"({', '.join(f'{g:+.2f}%' for g in gaps)}; {mean_gap:+.2f}% on average)",
             "MET" if within == len(gaps) else "MISSED"],
            ["memoized re-run: trains nothing", f"{rerun_wall:.0f} s wall vs "
             f"{pruned['wall_s']:.0f} s ({rerun_wall / pruned['wall_s']:.0%}), "
             f"records {'untouched' if untouched else 'REWRITTEN'}",
             "MET" if untouched else "MISSED"],
        ])
    )
    write_section("sweep-efficiency", body)


if __name__ == "__main__":
    main()

"""Re-run a recorded trial from its config hash and compare every metric with the record.

    harness-reproduce <hash or unique prefix> [--outputs DIR] [--tolerance X]

The trial is re-run with the recorded overrides in a fresh output folder; the command exits
non-zero when any result metric differs by more than the tolerance. On CPU with the same
package versions the tolerance is zero: runs are deterministic (seeded data order, dropout
and init; torch deterministic algorithms). On GPU, cuBLAS/cuDNN reductions and bf16
accumulation order make bit-exact reruns unlikely: the default there is 0.02 absolute.
Timing, speed and memory figures (cost/*, perf/tokens_per_s, perf/flops_per_s, mem/*) are
shown but never fail the comparison.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import subprocess
import sys
from pathlib import Path

from harness.trial.record import (
    changes_run,
    find_by_prefix,
    git_commit,
    load_record,
    package_versions,
)

TIMING = ("cost/", "mem/", "perf/tokens_per_s", "perf/flops_per_s")
GPU_TOLERANCE = 0.02


def _is_timing(name: str) -> bool:
    return name.startswith(TIMING)


def environment_warnings(record: dict) -> list[str]:
    """Names every package version and the git commit that differ from the record's."""
    env = record.get("env", {})
    then, now = env.get("versions", {}), package_versions()
    warnings = [f"{name}: recorded {then[name]}, installed {now.get(name, 'missing')}"
                for name in sorted(then) if now.get(name) != then[name]]
    commit = git_commit()
    if env.get("git_commit") and commit != env["git_commit"]:
        warnings.append(f"git commit: recorded {env['git_commit'][:12]}, now {str(commit)[:12]}")
    return warnings


def compare(recorded: dict[str, float], new: dict[str, float], tolerance: float) -> list[tuple]:
    """Rows (metric, recorded, new, delta, ok) for every metric in either run."""
    rows = []
    for name in sorted(set(recorded) | set(new)):
        a, b = recorded.get(name), new.get(name)
        if a is None or b is None:
            rows.append((name, a, b, None, _is_timing(name)))
            continue
        delta = b - a
        ok = _is_timing(name) or (math.isfinite(delta) and abs(delta) <= tolerance) or a == b
        rows.append((name, a, b, delta, ok))
    return rows


def rerun(record: dict, fresh: Path) -> dict:
    kept = [o for o in record.get("overrides", []) if changes_run(o)]
    cmd = [sys.executable, "-m", "harness.cli", *kept, f"paths.output_dir={fresh}"]
    print("re-running:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    records = sorted((fresh / "runs").glob("*/record.json"))
    if not records:
        raise RuntimeError(f"the re-run wrote no record under {fresh}")
    return load_record(records[0])


def print_table(rows: list[tuple]) -> None:
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'metric':<{width}}  {'recorded':>12}  {'re-run':>12}  {'delta':>10}")

    def fmt(v):
        return f"{v:.6g}" if isinstance(v, (int, float)) else "-"

    for name, a, b, delta, ok in rows:
        flag = "" if ok else "  <-- outside tolerance"
        print(f"{name:<{width}}  {fmt(a):>12}  {fmt(b):>12}  {fmt(delta):>10}{flag}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness-reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("hash", help="config hash or a unique prefix of it")
    parser.add_argument("--outputs", default="outputs", help="output dir holding runs/ [outputs]")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max |delta| per metric [0 on CPU, 0.02 on GPU]")
    args = parser.parse_args(argv)
    try:
        folder = find_by_prefix(args.outputs, args.hash)
    except (FileNotFoundError, ValueError) as exc:
        print(f"harness-reproduce: {exc}", file=sys.stderr)
        return 2
    record = load_record(folder / "record.json")
    if record.get("status") != "complete":
        print(f"harness-reproduce: run {folder.name[:12]} is {record.get('status')}, not complete",
              file=sys.stderr)
        return 2
    for warning in environment_warnings(record):
        print(f"warning: {warning}", file=sys.stderr)
    on_gpu = record.get("env", {}).get("device", "cpu") != "cpu"
    tolerance = args.tolerance if args.tolerance is not None else (GPU_TOLERANCE if on_gpu else 0.0)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    fresh = Path(args.outputs) / "reproduce" / f"{folder.name[:12]}-{stamp}"
    new = rerun(record, fresh)
    if new["config_hash"] != record["config_hash"]:
        print(f"warning: the re-run's config hash {new['config_hash'][:12]} differs from the "
              "record's: the config defaults or the dataset changed", file=sys.stderr)
    rows = compare(record["metrics"], new.get("metrics", {}), tolerance)
    print_table(rows)
    bad = [r[0] for r in rows if not r[4]]
    print(f"{len(rows) - len(bad)}/{len(rows)} metrics within tolerance {tolerance} "
          f"(timing metrics never fail); new run: {fresh}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

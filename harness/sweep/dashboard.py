"""`harness-dashboard`: a live view of a running or finished sweep in optuna-dashboard.

    harness-dashboard                                   # every study.db under outputs/sweeps
    harness-dashboard outputs/sweeps/technique_shootout # a sweep folder (its study.db or *.log)
    harness-dashboard sqlite:///path/study.db --port 8081
    harness-dashboard journal:///shared/sweeps/s1/study.log

Serves optuna-dashboard (trials, Pareto front, parameter importance, history) on the study's
own storage; the sweeper names the objectives (`study.set_metric_names`), so its plots read
`eval/task/field_acc` and `cost/usd`, not "Objective 0". Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.sweep import study as study_lib

DEFAULT = Path("outputs") / "sweeps"


def storage_url(target: str) -> str:
    """A storage URL from a URL, a study file (.db sqlite, .log journal) or a sweep folder."""
    if "://" in target:
        return target
    path = Path(target).expanduser().resolve()
    if path.is_file():
        return f"journal://{path}" if path.suffix == ".log" else f"sqlite:///{path}"
    if not path.is_dir():
        raise SystemExit(f"harness-dashboard: {target}: no such file or folder")
    found = sorted(path.glob("study.db")) or sorted(path.glob("*.log"))
    if not found:
        nested = sorted(path.glob("*/study.db"))
        if len(nested) == 1:
            found = nested
        elif nested:
            names = ", ".join(p.parent.name for p in nested)
            raise SystemExit(f"harness-dashboard: {target} holds several sweeps ({names}): "
                             "name one of their folders")
    if not found:
        raise SystemExit(f"harness-dashboard: {target}: no study.db or journal .log in it "
                         "(a sweep folder is outputs/sweeps/<study_name>)")
    return storage_url(str(found[0]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="harness-dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("target", nargs="?", default=str(DEFAULT),
                        help="sweep folder, study.db / journal .log file, or storage URL "
                             f"(default: {DEFAULT})")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = storage_url(args.target)
    from optuna_dashboard import run_server

    storage = study_lib.open_storage(url)
    print(f"harness-dashboard: {url} on http://{args.host}:{args.port}/dashboard/", flush=True)
    run_server(storage, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line entry points.

    harness-train [group=option ...] [key=value ...]      one trial (Hydra app over conf/)
    harness-train --multirun hydra/sweeper=harness ...    an ad-hoc sweep
    harness-sweep <name> [overrides]                      runs sweeps/<name>.yaml
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import offline
from harness.config.schema import register_configs

log = logging.getLogger("harness")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
register_configs()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def _train(cfg: DictConfig) -> dict[str, float]:
    from harness.config.errors import HarnessError

    hydra_cfg = HydraConfig.get()
    if cfg.trial.worker is not None:  # a worker of an asynchronous sweep: many trials
        from harness.sweep.workers import work

        return work(cfg, run_trial)
    try:
        return run_trial(cfg, list(hydra_cfg.overrides.task))
    except HarnessError as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        log.error("%s", exc)  # one clear line, no library traceback
        sys.exit(2)


def run_trial(cfg: DictConfig, overrides: list[str]) -> dict[str, float]:
    """One trial, with the sweep's pruning monitors when the sweeper named its Optuna trial."""
    from harness.trial.run import run

    monitors = []
    if cfg.trial.study_name is not None:
        from harness.sweep.pruning import trial_monitors

        monitors = trial_monitors(cfg)
    return run(cfg, overrides, monitors)


def train_main() -> None:
    offline.configure("auto")  # before transformers / datasets are imported
    _train()


def _sweeps() -> dict[str, str]:
    """Sweep file name -> its one-line description (the first comment after its usage line)."""
    found = {}
    for path in sorted((PROJECT_ROOT / "sweeps").glob("*.yaml")):
        lines = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
        lines = [ln for ln in lines if not ln.startswith(("@package", "harness-sweep"))]
        paragraph = " ".join(lines[:next((i for i, ln in enumerate(lines[1:], 1) if not ln),
                                         len(lines))]).strip()
        about = paragraph.split("? ")[0].split(". ")[0].split(": ")[0]
        found[path.stem] = about if len(about) <= 80 else about[:77].rsplit(" ", 1)[0] + " ..."
    return found


def sweep_main() -> None:
    """`harness-sweep NAME [overrides]` = `harness-train --multirun +sweeps=NAME [overrides]`."""
    args, sweeps = sys.argv[1:], _sweeps()
    if not args or args[0].startswith("-") or "=" in args[0]:
        width = max(map(len, sweeps), default=0)
        print("usage: harness-sweep NAME [overrides]   (= harness-train --multirun "
              "+sweeps=NAME [overrides])\n\nsweeps (sweeps/NAME.yaml):")
        print("\n".join(f"  {name:<{width}}  {about}" for name, about in sweeps.items()))
        if args and args[0] in ("-h", "--help"):
            print()
            sys.argv = [sys.argv[0], "--help"]
            train_main()
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    name, rest = args[0], args[1:]
    if name not in sweeps:
        print(f"harness-sweep: no sweep {name!r} in {PROJECT_ROOT / 'sweeps'} "
              f"(known: {', '.join(sweeps)})", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], "--multirun", f"+sweeps={name}", *rest]
    train_main()


if __name__ == "__main__":
    train_main()

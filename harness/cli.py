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

from harness import offline
from harness.schema import register_configs

log = logging.getLogger("harness")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
register_configs()


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def _train(cfg: DictConfig) -> dict[str, float]:
    from harness.errors import HarnessError
    from harness.run import run

    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if cfg.trial.worker is not None:  # a worker of an asynchronous sweep: many trials
        from harness.sweep_worker import work

        return work(cfg, run)
    try:
        return run(cfg, overrides)
    except HarnessError as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweeper records the trial as failed and goes on
        log.error("%s", exc)  # one clear line, no library traceback
        sys.exit(2)


def train_main() -> None:
    offline.configure("auto")  # before transformers / datasets are imported
    _train()


def sweep_main() -> None:
    """`harness-sweep NAME [overrides]` = `harness-train --multirun +sweeps=NAME [overrides]`."""
    args = sys.argv[1:]
    if not args or args[0].startswith("-") or "=" in args[0]:
        names = sorted(p.stem for p in (PROJECT_ROOT / "sweeps").glob("*.yaml"))
        print(f"usage: harness-sweep NAME [overrides]   (sweeps: {', '.join(names)})")
        sys.exit(2)
    name, rest = args[0], args[1:]
    if not (PROJECT_ROOT / "sweeps" / f"{name}.yaml").exists():
        names = sorted(p.stem for p in (PROJECT_ROOT / "sweeps").glob("*.yaml"))
        print(f"harness-sweep: no sweep {name!r} in {PROJECT_ROOT / 'sweeps'} "
              f"(known: {', '.join(names)})", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], "--multirun", f"+sweeps={name}", *rest]
    train_main()


if __name__ == "__main__":
    train_main()

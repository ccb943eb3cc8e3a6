"""`hydra/sweeper=harness`: the sweeper's settings (harness.sweep.settings), registered in
Hydra's ConfigStore with the adapter class to instantiate.

Hydra imports every module of the `hydra_plugins` namespace package when it starts, which
registers this node; the sweeper itself (and Optuna) is imported only for --multirun.
No `from __future__ import annotations` here: Hydra's plugin scan imports this module outside
sys.modules, where dataclasses cannot resolve string annotations.
"""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from harness.sweep.settings import Settings


@dataclass
class HarnessSweeperConf(Settings):
    _target_: str = "hydra_plugins.harness_sweeper.sweeper.HarnessSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="harness", node=HarnessSweeperConf,
                             provider="harness")

"""Lets Hydra find the project's sweep files: `sweeps/<name>.yaml` is option <name> of the
`sweeps` group (`harness-train --multirun +sweeps=smoke`, or `harness-sweep smoke`)."""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class HarnessSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (PROJECT_ROOT / "sweeps").is_dir():
            search_path.append(provider="harness-sweeps", path=f"file://{PROJECT_ROOT}")

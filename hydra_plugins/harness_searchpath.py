"""Lets Hydra find the project's sweep files: `sweeps/<name>.yaml` is option <name> of the
`sweeps` group (`harness-train --multirun +sweeps=smoke`, or `harness-sweep smoke`).

The search path entry is a folder whose only entry is a link to `sweeps/`: Hydra lists every
folder of a search path entry as a config group, so adding the project root would make
`.venv/`, `outputs/` and every other folder one (and `--help` walk all of them)."""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

SEARCH_ROOT = Path(__file__).resolve().parent / "harness_sweeper" / "search_root"


class HarnessSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if (SEARCH_ROOT / "sweeps").is_dir():
            search_path.append(provider="harness-sweeps", path=f"file://{SEARCH_ROOT}")

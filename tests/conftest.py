"""Shared fixtures: the REAL conf/ composed onto the CPU-sized setup every test uses.

    def test_x(compose_cfg, tmp_path):
        cfg = compose_cfg(["technique=dora"], tmp_path)            # task config
        full = compose_cfg(["+sweeps=smoke"], tmp_path, hydra=True)  # plus the hydra node

Forced: model=tiny_random, eval=smoke, every path under tmp_path, no logger. Nothing here
downloads: the hub is off for the whole session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from harness.schema import register_configs

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
register_configs()


def tiny_overrides(tmp_path: Path) -> list[str]:
    """The overrides that shrink any composition to the test setup (CLI runs use them too)."""
    return [
        "model=tiny_random", "eval=smoke", "logger=none",
        f"paths.output_dir={tmp_path / 'outputs'}", f"paths.root_dir={tmp_path}",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.cache_dir={os.environ.get('HARNESS_CACHE', tmp_path / 'cache')}",
    ]


def _compose(overrides: list[str], tmp_path: Path, hydra: bool = False) -> DictConfig:
    # Later overrides win, so the caller's come after the forced ones.
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*tiny_overrides(tmp_path), *overrides],
                       return_hydra_config=hydra)


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """`compose_cfg(overrides, tmp_path, hydra=False)`: the real conf/, shrunk for tests."""
    return _compose


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture
def chromium(tmp_path: Path):
    """A headless Chromium (selenium) for the browser tests; skips without the Debian packages
    chromium and chromium-driver (.ci/run installs them). No sandbox, no GPU, and nothing that
    calls out to the network."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian packages chromium and chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1600,2000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()

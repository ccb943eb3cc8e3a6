"""Shared fixtures: the REAL conf/ composed onto the CPU-sized setup every test uses.

    def test_x(compose_cfg, tmp_path):
        cfg = compose_cfg(["technique=dora"], tmp_path)            # task config
        full = compose_cfg(["+sweeps=smoke"], tmp_path, hydra=True)  # plus the hydra node

Forced: model=tiny_random, eval=smoke, every path under tmp_path (the model cache is shared
by the session, or $HARNESS_CACHE), no logger. Nothing here downloads: the hub is off for the
whole session. Every test composes through here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from harness.config.schema import register_configs

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
ASSETS = ROOT / "tests" / "assets"

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HARNESS_OFFLINE"):
    os.environ[_var] = "1"  # no test may touch the network
register_configs()


def tiny_overrides(out: Path, cache: Path | None = None) -> list[str]:
    """The overrides that shrink any composition to the test setup (CLI runs use them too)."""
    cache = cache or Path(os.environ.get("HARNESS_CACHE", out / "cache"))
    return [
        "model=tiny_random", "eval=smoke", "logger=none",
        f"paths.output_dir={out / 'outputs'}",
        f"paths.log_dir={out / 'logs'}", f"paths.cache_dir={cache}",
    ]


def compose_config(overrides: list[str], out: Path, cache: Path | None = None,
                   hydra: bool = False) -> DictConfig:
    """The real conf/ with the test overrides; the caller's come after them and win."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("config", overrides=[*tiny_overrides(out, cache), *overrides],
                       return_hydra_config=hydra)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """The model cache of the session: each tiny random model is built once."""
    return Path(os.environ.get("HARNESS_CACHE") or tmp_path_factory.mktemp("cache"))


@pytest.fixture
def compose_cfg(cache_dir) -> Callable[..., DictConfig]:
    """`compose_cfg(overrides, tmp_path, hydra=False)`: the real conf/, shrunk for tests."""

    def make(overrides: list[str], tmp_path: Path, hydra: bool = False) -> DictConfig:
        return compose_config(overrides, tmp_path, cache_dir, hydra)

    return make


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

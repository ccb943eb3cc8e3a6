"""`harness-dashboard`: storage resolution, and optuna-dashboard showing a sweep's study.

    pytest tests/test_dashboard.py              # which storage a folder or file opens
    pytest tests/test_dashboard.py -m slow      # + the study page in headless Chromium
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from harness.sweep import dashboard
from harness.sweep import study as study_lib

OBJECTIVES = [study_lib.Objective("eval/task/field_acc", "maximize"),
              study_lib.Objective("cost/usd", "minimize")]


def make_study(folder: Path, name: str = "shootout", trials: int = 3) -> str:
    url = f"sqlite:///{folder / 'study.db'}"
    study = study_lib.open_study(name, url, OBJECTIVES)
    for i in range(trials):
        study.add_trial(optuna.trial.create_trial(
            params={"technique": ["lora", "full", "qlora"][i % 3]},
            distributions={"technique": optuna.distributions.CategoricalDistribution(
                ["lora", "full", "qlora"])},
            values=[0.5 + 0.1 * i, 0.01 * (i + 1)]))
    return url


def test_storage_from_folder_file_or_url(tmp_path: Path):
    sweep = tmp_path / "sweeps" / "shootout"
    sweep.mkdir(parents=True)
    url = make_study(sweep)
    assert dashboard.storage_url(str(sweep)) == url
    assert dashboard.storage_url(str(sweep / "study.db")) == url
    assert dashboard.storage_url(str(tmp_path / "sweeps")) == url  # the only sweep in it
    assert dashboard.storage_url("journal:///x/study.log") == "journal:///x/study.log"
    (tmp_path / "j.log").write_text("")
    assert dashboard.storage_url(str(tmp_path / "j.log")) == f"journal://{tmp_path / 'j.log'}"
    with pytest.raises(SystemExit, match="no such file or folder"):
        dashboard.storage_url(str(tmp_path / "nope"))
    (tmp_path / "sweeps" / "other").mkdir()
    make_study(tmp_path / "sweeps" / "other", "other")
    with pytest.raises(SystemExit, match=r"several sweeps \(other, shootout\)"):
        dashboard.storage_url(str(tmp_path / "sweeps"))


def test_sweeper_names_the_objectives(tmp_path: Path):
    url = make_study(tmp_path)
    study = optuna.load_study(study_name="shootout", storage=url)
    assert study.metric_names == ["eval/task/field_acc", "cost/usd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_dashboard_shows_the_study_in_chromium(tmp_path: Path, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    make_study(tmp_path)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "harness.sweep.dashboard", str(tmp_path),
                               "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the server is up once it accepts connections
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, server.stdout.read()
            time.sleep(0.5)
        chromium.get(f"http://127.0.0.1:{port}/dashboard/studies/1")

        def shows(text: str):
            return lambda d: text in d.find_element(By.TAG_NAME, "body").text

        WebDriverWait(chromium, 30).until(shows("shootout"))
        WebDriverWait(chromium, 30).until(shows("eval/task/field_acc"))  # named, not Objective 0
        chromium.get(f"http://127.0.0.1:{port}/dashboard/studies/1/trials")
        WebDriverWait(chromium, 30).until(shows("Trial 2"))
        assert chromium.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)

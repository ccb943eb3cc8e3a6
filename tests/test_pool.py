"""The device pool (harness/sweep/pool.py): one node's GPUs shared out among a sweep's trials.

    pytest tests/test_pool.py               # ~30 s on 2 cores, no GPU: devices are simulated
    pytest tests/test_pool.py -m slow       # a real `harness-train --multirun` on the pool

The scheduler runs with a real engine, study (SQLite) and space composed from conf/; only
`start` is a stand-in (FakeTrials): each trial blocks until the test releases it, then
writes its record, so the test decides which trial ends when and checks which devices the
next one gets.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.trial import TrialState

from harness.config.errors import ConfigError
from harness.config.files import atomic_write_text
from harness.sweep import pool as pool_module
from harness.sweep.engine import Engine, JobEnd, Pending, SweepError, settings_from
from harness.sweep.pool import (
    DevicePool,
    is_slurm,
    run_pool,
    slurm_resources,
    spawn_trial,
    visible_devices,
)
from harness.sweep.settings import Settings
from harness.sweep.space import build_space, format_value

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = {"optimizer.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}
WAIT_S = 60


# ---------------------------------------------------------------- the node's devices
def test_visible_devices_from_the_environment_else_torch(monkeypatch):
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "3,5"}) == ["3", "5"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": " 0, 1,"}) == ["0", "1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "GPU-8f2e,GPU-11aa"}) == ["GPU-8f2e",
                                                                              "GPU-11aa"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []  # set and empty: no GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert visible_devices({}) == ["0", "1", "2"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "7"}) == ["7"]  # the variable wins


def test_device_pool_groups_consecutive_devices_and_lends_each_once(caplog):
    pool = DevicePool(list("01234"), 2)
    assert pool.groups == [("0", "1"), ("2", "3")] and pool.slots == 2
    assert "devices 4 stay unused" in caplog.text
    assert [pool.take(), pool.take(), pool.take()] == [("0", "1"), ("2", "3"), None]
    pool.give(("2", "3"))
    assert pool.free == 1 and pool.take() == ("2", "3")
    with pytest.raises(ValueError, match="not lent"):
        pool.give(("4",))
    shared = DevicePool(["0", "1"], 1, trials_per_device=2)
    assert [shared.take() for _ in range(5)] == [("0",), ("1",), ("0",), ("1",), None]


def test_device_pool_errors_name_the_setting(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ConfigError) as err:
        DevicePool(visible_devices(), 4)
    assert str(err.value) == ("hydra.sweeper.devices_per_trial=4 but this node shows 2 GPUs "
                              "(CUDA_VISIBLE_DEVICES=0,1)")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match=r"devices_per_trial=1 but this node shows no GPUs "
                                          r"\(CUDA_VISIBLE_DEVICES=\)"):
        DevicePool(visible_devices(), 1)
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.devices_per_trial=-1: .* at least 1"):
        DevicePool(["0"], -1)
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.trials_per_device=0: at least 1"):
        DevicePool(["0"], 1, trials_per_device=0)


# ---------------------------------------------------------------- the scheduler
class FakeTrials:
    """`start` for run_pool: a trial blocks until released, then writes a complete record
    (or raises, or returns an error, as `plan` says). Every start checks that no device
    carries more running trials than `share`."""

    def __init__(self, folders: dict[int, Path], share: int = 1):
        self.folders, self.share = folders, share
        self.plan: dict[int, str] = {}  # trial number -> "raise" | "exit"
        self.lock = threading.Lock()
        self.on: dict[int, tuple[str, ...]] = {}  # running trials' devices
        self.starts: list[tuple[int, tuple[str, ...]]] = []
        self.overbooked: list = []
        self.started: queue.Queue[int] = queue.Queue()
        self.gates: dict[int, threading.Event] = {}

    def gate(self, n: int) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(n, threading.Event())

    def __call__(self, job_overrides: list[str], devices: tuple[str, ...]) -> JobEnd:
        n = int(next(o for o in job_overrides if o.startswith("trial.number=")).split("=")[1])
        with self.lock:
            load = Counter(d for ds in self.on.values() for d in ds) + Counter(devices)
            if max(load.values()) > self.share:
                self.overbooked.append((n, dict(load)))
            self.on[n] = devices
            self.starts.append((n, devices))
        self.started.put(n)
        if not self.gate(n).wait(WAIT_S):
            raise TimeoutError(f"trial {n} was never released")
        with self.lock:
            del self.on[n]
        if self.plan.get(n) == "raise":
            raise RuntimeError("CUDA error: out of memory")
        if self.plan.get(n) == "exit":
            return JobEnd(error="exit code 1 (boom)")
        record = {"status": "complete", "metrics": {"eval/task/acc": 0.5 + n / 100}}
        atomic_write_text(self.folders[n] / "record.json", json.dumps(record))
        return JobEnd()

    def next_start(self) -> int:
        return self.started.get(timeout=WAIT_S)

    def release(self, *numbers: int) -> None:
        for n in numbers:
            self.gate(n).set()

    def running(self) -> list[int]:
        with self.lock:
            return sorted(self.on)

    def devices_of(self, n: int) -> tuple[str, ...]:
        return dict(self.starts)[n]


class Background(threading.Thread):
    """run_pool in a thread of its own (its "main" thread), so the test can steer the trials."""

    def __init__(self, *args):
        super().__init__(daemon=True)
        self.args, self.error = args, None

    def run(self) -> None:
        try:
            run_pool(*self.args)
        except BaseException as exc:
            self.error = exc

    def finish(self) -> BaseException | None:
        self.join(WAIT_S)
        assert not self.is_alive(), "run_pool did not return"
        return self.error


def pool_sweep(compose_cfg, tmp_path, n_trials, devices, k, params=LR, **settings):
    """A real engine on a real study and space; `start` is FakeTrials."""
    s = settings_from({"n_trials": n_trials, "sampler": {"name": "random", "seed": 0},
                       "pruner": {"name": "none"}, "params": params, **settings})
    engine = Engine(s, lambda overrides: compose_cfg(overrides, tmp_path),
                    str(tmp_path / "outputs"), tmp_path / "sweep",
                    f"sqlite:///{tmp_path / 'study.db'}")
    space, passthrough = build_space(s.params, [], OverridesParser.create().parse_overrides)
    engine.open("pool", space)
    folders: dict[int, Path] = {}
    ask = engine.ask

    def asking(space, passthrough):  # the fake trials write their records where settle reads
        p = ask(space, passthrough)
        folders[p.trial.number] = p.folder
        return p

    engine.ask = asking
    fake = FakeTrials(folders, share=s.trials_per_device)
    pool = DevicePool(devices, k, s.trials_per_device)
    return engine, fake, Background(engine, space, passthrough, n_trials, pool, fake)


def states(engine) -> list[str]:
    return [t.state.name for t in engine.study.get_trials()]


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("devices", [list("0123"), list("01234")], ids=["4_gpus", "5_gpus"])
def test_a_freed_group_takes_the_next_trial_while_the_other_still_runs(compose_cfg, tmp_path,
                                                                       devices):
    engine, fake, sweep = pool_sweep(compose_cfg, tmp_path, 4, devices, k=2)
    a, b = ("0", "1"), ("2", "3")
    sweep.start()
    assert {fake.next_start(), fake.next_start()} == {0, 1}
    assert (fake.devices_of(0), fake.devices_of(1)) == (a, b)
    fake.release(1)  # B ends first: its devices take trial 2 while trial 0 keeps A
    assert fake.next_start() == 2 and fake.devices_of(2) == b
    fake.release(2)
    assert fake.next_start() == 3 and fake.devices_of(3) == b
    assert fake.running() == [0, 3]
    assert states(engine)[1:3] == ["COMPLETE", "COMPLETE"]  # told while trial 0 runs
    assert states(engine)[0] == "RUNNING"
    fake.release(0, 3)
    assert sweep.finish() is None
    trials = engine.study.get_trials()
    assert states(engine) == ["COMPLETE"] * 4
    assert [t.user_attrs["devices"] for t in trials] == [list(a), list(b), list(b), list(b)]
    assert [t.values[0] for t in trials] == [0.5, 0.51, 0.52, 0.53]  # from each record
    assert not fake.overbooked


def test_a_crashed_trial_frees_its_devices_and_fails_with_its_reason(compose_cfg, tmp_path):
    engine, fake, sweep = pool_sweep(compose_cfg, tmp_path, 3, ["0", "1"], k=1,
                                     max_failure_rate=1.0)
    fake.plan = {0: "raise", 1: "exit"}
    sweep.start()
    assert {fake.next_start(), fake.next_start()} == {0, 1}
    fake.release(0)  # start raised: its device goes to the next trial
    assert fake.next_start() == 2 and fake.devices_of(2) == fake.devices_of(0) == ("0",)
    fake.release(1)  # start returned an error
    assert fake.next_start() == 3 and fake.devices_of(3) == ("1",)
    fake.release(2)
    assert fake.next_start() == 4 and fake.devices_of(4) == ("0",)
    fake.release(3, 4)
    assert sweep.finish() is None
    trials = engine.study.get_trials()
    assert states(engine) == ["FAIL", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]  # FAIL: uncounted
    assert trials[0].user_attrs["error"] == "RuntimeError: CUDA error: out of memory"
    assert trials[1].user_attrs["error"] == "exit code 1 (boom)"
    assert not fake.overbooked


def test_too_many_failures_stop_asking_and_the_running_trials_finish(compose_cfg, tmp_path):
    engine, fake, sweep = pool_sweep(compose_cfg, tmp_path, 4, ["0", "1"], k=1,
                                     max_failure_rate=0.0)
    fake.plan = {0: "exit"}
    sweep.start()
    assert {fake.next_start(), fake.next_start()} == {0, 1}
    fake.release(0)
    wait_for(lambda: states(engine)[0] == "FAIL", "trial 0 told FAIL")
    time.sleep(0.3)  # time enough to ask another trial, were it going to
    assert len(fake.starts) == 2 and fake.running() == [1]
    fake.release(1)
    error = sweep.finish()
    assert isinstance(error, SweepError) and "1 trials failed" in str(error)
    assert states(engine) == ["FAIL", "COMPLETE"]  # the running one was told before stopping
    assert (tmp_path / "sweep" / "study.csv").exists()


def test_trials_share_a_device_only_with_trials_per_device(compose_cfg, tmp_path):
    engine, fake, sweep = pool_sweep(compose_cfg, tmp_path, 4, ["0", "1"], k=1,
                                     trials_per_device=2)
    sweep.start()
    assert sorted(fake.next_start() for _ in range(4)) == [0, 1, 2, 3]
    assert Counter(d for _, ds in fake.starts for d in ds) == {"0": 2, "1": 2}
    assert not fake.overbooked  # share=2 here; the other tests check share=1
    fake.release(0, 1, 2, 3)
    assert sweep.finish() is None
    assert states(engine) == ["COMPLETE"] * 4


def test_the_same_run_twice_trains_once_and_a_finished_one_is_a_cache_hit(compose_cfg,
                                                                         tmp_path):
    engine, fake, sweep = pool_sweep(compose_cfg, tmp_path, 3, ["0", "1"], k=1, params={})
    sweep.start()  # no parameters: every trial is the same run
    assert fake.next_start() == 0
    wait_for(lambda: len(engine.study.trials) == 3, "three trials asked")
    assert len(fake.starts) == 1  # a free device, yet trials 1 and 2 wait for trial 0
    fake.release(0)
    assert sweep.finish() is None
    trials = engine.study.get_trials()
    assert states(engine) == ["COMPLETE"] * 3 and {t.values[0] for t in trials} == {0.5}
    assert [t.user_attrs.get("duplicate_of") for t in trials] == [None, 0, 0]
    run_pool(engine, [], [], 4, DevicePool(["0"], 1), fake)  # one more: trained already
    assert len(fake.starts) == 1 and engine.study.trials[3].user_attrs["cache_hit"]


# ---------------------------------------------------------------- one trial as a process
JOB = ["model=tiny_random", "optimizer.lr=0.001", "trial.number=7", "hydra.sweep.dir=/elsewhere",
       "hydra.sweep.subdir=trial_7"]


def test_spawn_trial_command_lines(tmp_path, monkeypatch):
    from torch.distributed.run import get_args_parser

    seen = []

    def run(cmd, **kwargs):
        seen.append((cmd, kwargs["env"]))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(pool_module.subprocess, "run", run)
    assert spawn_trial(JOB, ("3",), "config", tmp_path / "sweep") == JobEnd()
    assert spawn_trial(JOB, ("4", "5"), "config", tmp_path / "sweep") == JobEnd()
    folder = tmp_path / "sweep" / "trial_7"
    single = ["model=tiny_random", "optimizer.lr=0.001", "trial.number=7",
              f"hydra.run.dir={format_value(str(folder))}"]  # hydra.sweep.* are multirun keys
    (one, env_one), (two, env_two) = seen
    assert one == [sys.executable, "-m", "harness.cli", "--config-name", "config", *single]
    assert env_one["CUDA_VISIBLE_DEVICES"] == "3" and env_two["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert two[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node=2"]
    args = get_args_parser().parse_args(two[3:])  # what torchrun makes of it
    assert (args.standalone, args.nproc_per_node, args.module) == (True, "2", True)
    assert args.training_script == "harness.cli"
    assert args.training_script_args == ["--config-name", "config", *single]
    assert (folder / "trial.log").exists()


def test_a_trial_process_sees_its_devices_and_its_exit_code_is_the_error(tmp_path, monkeypatch):
    script = "import os, sys; print('on', os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(3)"
    monkeypatch.setattr(pool_module, "trial_command", lambda *a: [sys.executable, "-c", script])
    end = spawn_trial(JOB, ("2", "6"), "config", tmp_path)
    log = tmp_path / "trial_7" / "trial.log"
    assert end.error == f"exit code 3 (on 2,6; log: {log})"


def test_a_real_trial_with_a_bad_value_exits_2_with_the_reason(tmp_path):
    job = [f"paths.output_dir={tmp_path / 'out'}", "optimizer.lr=-1",
           "hydra.sweep.dir=elsewhere", "hydra.sweep.subdir=trial_0"]
    end = spawn_trial(job, ("0",), "config", tmp_path)  # harness.cli: one line, exit 2
    assert end.error.startswith("exit code 2 (")
    assert "optimizer.lr=-1.0: the learning rate must be > 0" in end.error
    assert end.error.endswith(f"; log: {tmp_path / 'trial_0' / 'trial.log'})")
    assert "Traceback" not in (tmp_path / "trial_0" / "trial.log").read_text()


def test_a_worker_with_k_gpus_runs_each_trial_through_torchrun_on_them(monkeypatch):
    from harness.sweep import workers

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # what SLURM gives a worker's one task
    calls = []
    monkeypatch.setattr(pool_module, "spawn_trial", lambda *args: calls.append(args) or JobEnd())
    run_one = workers._runner(2, None, None, "config", "/sweep")
    p = Pending(optuna.create_study().ask(), [], JOB, "hash", Path("/run"))
    assert run_one(p) == JobEnd()
    assert calls == [(JOB, ("2", "3"), "config", "/sweep")]
    assert p.trial.user_attrs["devices"] == ["2", "3"]
    assert workers._runner(1, None, None, "config", "/sweep").func is workers._run_here


# ---------------------------------------------------------------- SLURM and the sweeper
SLURM_YAML = {"tasks_per_node": 1, "gpus_per_task": None, "gpus_per_node": 1}  # slurm.yaml


def test_slurm_resources_give_each_job_its_gpus():
    assert slurm_resources(0, 0, SLURM_YAML) == {}
    assert slurm_resources(1, 0, SLURM_YAML) == {}  # slurm.yaml: one task, one GPU
    # a trial job: k ranks, each seeing the job's k GPUs (LOCAL_RANK picks its own)
    assert slurm_resources(2, 0, SLURM_YAML) == {"tasks_per_node": 2, "gpus_per_node": 2}
    # an asynchronous worker: one task with the k GPUs its trials run on through torchrun
    assert slurm_resources(2, 4, SLURM_YAML) == {"gpus_per_node": 2}
    # the user's own values are kept when they agree
    mine = {**SLURM_YAML, "tasks_per_node": 2}
    assert slurm_resources(2, 0, mine, {"tasks_per_node"}) == {"gpus_per_node": 2}
    both = {"tasks_per_node": 2, "gpus_per_task": None, "gpus_per_node": 2}
    assert slurm_resources(2, 0, both, {"gpus_per_node", "tasks_per_node"}) == {}


@pytest.mark.parametrize(("k", "workers", "launcher", "user_set", "said"), [
    (2, 0, {**SLURM_YAML, "tasks_per_node": 4}, ("tasks_per_node",), "tasks_per_node=4"),
    (2, 0, {**SLURM_YAML, "gpus_per_task": 1}, ("gpus_per_task",), "gpus_per_task=1"),
    (2, 3, {**SLURM_YAML, "tasks_per_node": 2}, ("tasks_per_node",), "tasks_per_node=2"),
    (2, 0, SLURM_YAML, ("gpus_per_node",), "gpus_per_node=1"),
])
def test_slurm_resources_that_contradict_devices_per_trial(k, workers, launcher, user_set, said):
    with pytest.raises(ConfigError, match=rf"devices_per_trial={k} needs.*hydra\.launcher\.{said}"):
        slurm_resources(k, workers, launcher, user_set)


def test_is_slurm():
    assert is_slurm("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    assert not is_slurm("hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")
    assert not is_slurm("hydra._internal.core_plugins.basic_launcher.BasicLauncher")


def _sweeper(cfg):
    from hydra_plugins.harness_sweeper.sweeper import HarnessSweeper

    sweeper = HarnessSweeper(**cfg.hydra.sweeper)
    sweeper.config = cfg
    return sweeper


def test_sweeper_asks_slurm_for_k_tasks_before_the_launcher_starts(compose_cfg, tmp_path):
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.sweeper.devices_per_trial=2"], tmp_path,
                      hydra=True)
    _sweeper(cfg)._fit_slurm_launcher(cfg)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_task, launcher.gpus_per_node) == (2, None, 2)
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.sweeper.devices_per_trial=2",
                       "hydra.launcher.tasks_per_node=1"], tmp_path, hydra=True)
    with pytest.raises(Exception, match="tasks_per_node=1"):  # the user's value contradicts k
        _sweeper(cfg)._fit_slurm_launcher(cfg)


def test_a_local_pool_with_workers_is_an_error(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    cfg = compose_cfg(["hydra.sweeper.devices_per_trial=1"], tmp_path, hydra=True)
    pool = _sweeper(cfg)._device_pool(settings_from(cfg.hydra.sweeper))
    assert pool.groups == [("0",), ("1",), ("2",)]
    cfg = compose_cfg(["hydra.sweeper.devices_per_trial=1", "hydra.sweeper.workers=2"], tmp_path,
                      hydra=True)
    with pytest.raises(ConfigError, match="already runs trials asynchronously"):
        _sweeper(cfg)._device_pool(settings_from(cfg.hydra.sweeper))
    assert Settings().devices_per_trial == 0  # off unless asked for


# ---------------------------------------------------------------- the real sweep
@pytest.mark.slow
def test_sweep_on_two_visible_gpus_uses_both(tmp_path):
    from test_sweeper import NO_PRUNING, load_study, records, run_fake

    run_fake(tmp_path, *NO_PRUNING, "hydra.sweeper.devices_per_trial=1",
             env={"CUDA_VISIBLE_DEVICES": "3,5", "FAKE_STEP_S": "0.5"})
    out = tmp_path / "out"
    study = load_study(out, "fake")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert {tuple(t.user_attrs["devices"]) for t in study.trials} == {("3",), ("5",)}
    recs = records(out)
    pids = set()
    for t in study.trials:  # the trial processes hashed their runs as the sweeper did
        rec = recs[t.user_attrs["config_hash"]]
        assert rec["status"] == "complete"
        pids.add(rec["env"]["pid"])
        assert (out / "sweeps" / "fake" / f"trial_{t.number}" / "trial.log").exists()
    assert len(pids) == 3 and os.getpid() not in pids  # one fresh process per trial

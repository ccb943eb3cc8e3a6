"""The sweep engine (harness/sweep/) and its Hydra adapter (hydra_plugins/harness_sweeper).

    pytest tests/test_sweeper.py -m "not slow"   # ~2 min on 2 cores
    pytest tests/test_sweeper.py -m slow         # real smoke sweeps, submitit launcher: ~7 min

Spaces, pruning and storage are tested directly. Whole sweeps come in two kinds: the real
`harness-train --multirun` with its training replaced by a formula (STAND_IN: the real CLI,
sweeper, engine, trial, records and pruning monitors; `harness.trial.run._pipeline` swapped
in every process through a sitecustomize module) makes pruning, failures, memoization and
interruptions exact in ~40 s each, mostly imports; the slow ones run the real pipeline and
the submitit launcher.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.trial import TrialState

from harness.config.errors import ConfigError
from harness.sweep.space import (
    build_space,
    format_value,
    grid,
    sample,
    to_overrides,
    validate_space,
)
from harness.sweep.study import (
    SETTINGS_ATTR,
    Objective,
    check_objectives,
    make_pruner,
    make_sampler,
    outcome_from_record,
    parse_objectives,
    recover_interrupted,
)

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
BIN = Path(sys.executable).parent
optuna.logging.set_verbosity(optuna.logging.WARNING)


def parse_overrides(lines: list[str]):
    return OverridesParser.create().parse_overrides(lines)


def space_of(cfg, arguments=()):
    sweeper = cfg.hydra.sweeper
    params = dict(sweeper.params)
    return build_space(params, list(arguments), parse_overrides)


def group_options(cfg):
    return lambda group: sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


# ---------------------------------------------------------------- search spaces
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_conditional_space_never_samples_rank_for_full(compose_cfg, tmp_path, sampler):
    cfg = compose_cfg(["+sweeps=smoke"], tmp_path, hydra=True)
    space, _ = space_of(cfg)
    study = optuna.create_study(sampler=make_sampler({"name": sampler, "seed": 0}, None, 0))
    seen = set()
    for i in range(40):
        trial = study.ask()
        values = sample(trial, space)
        overrides = to_overrides(space, values)
        seen.add(values["technique"])
        if values["technique"] == "full":
            assert "technique.r" not in trial.params
            assert not any(o.startswith("technique.r=") for o in overrides)
        else:
            assert values["technique.r"] in (4, 8)
            assert f"technique.r={values['technique.r']}" in overrides
        study.tell(trial, float(i % 7))
    assert seen == {"full", "lora", "qlora", "dora"}


def test_bad_parameter_name_fails_fast_naming_it(compose_cfg, tmp_path):
    cfg = compose_cfg([], tmp_path, hydra=True)
    space, _ = build_space({"technique.rank": [4, 8]}, [], parse_overrides)
    with pytest.raises(ConfigError, match=r"technique\.rank.*did you mean technique\.r"):
        validate_space(space, cfg, group_options(cfg))
    space, _ = build_space({}, ["technique=lora,bogus"], parse_overrides)
    with pytest.raises(ConfigError, match="no option.*bogus"):
        validate_space(space, cfg, group_options(cfg))
    later = {"technique.r": {"type": "int", "low": 4, "high": 8, "when": {"technique": "lora"}},
             "technique": ["full", "lora"]}
    with pytest.raises(ConfigError, match="not a parameter listed before"):
        validate_space(build_space(later, [], parse_overrides)[0], cfg, group_options(cfg))
    with pytest.raises(ConfigError, match=r"optimizer\.lr.*log scale"):
        build_space({"optimizer.lr": {"type": "float", "low": 0, "high": 1, "log": True}}, [],
                    parse_overrides)


def test_bad_parameter_fails_before_any_training(tmp_path):
    out = subprocess.run(
        [str(BIN / "harness-sweep"), "smoke", f"paths.output_dir={tmp_path / 'out'}",
         "technique.rank=4,8"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode != 0
    assert "unknown parameter 'technique.rank'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out" / "runs").exists()


def test_command_line_overrides_merge_into_the_space(compose_cfg, tmp_path):
    cfg = compose_cfg(["+sweeps=smoke"], tmp_path, hydra=True)
    space, passthrough = space_of(cfg, [
        "+sweeps=smoke", "technique=lora", "optimizer.lr=tag(log, interval(1e-5, 1e-3))",
        "train.max_steps=range(2, 8, 2)", "optimizer.weight_decay=0.0,0.1"])
    by = {p.key: p for p in space}
    assert passthrough == ["+sweeps=smoke"]
    assert by["technique"].kind == "fixed" and by["technique"].value == "lora"
    assert by["technique.r"].when == {"technique": ("lora", "qlora", "dora")}  # kept
    assert (by["optimizer.lr"].kind, by["optimizer.lr"].log) == ("float", True)
    assert (by["train.max_steps"].kind, by["train.max_steps"].high) == ("int", 6)
    assert by["optimizer.weight_decay"].choices == (0.0, 0.1)
    validate_space(space, cfg, group_options(cfg))
    values = sample(optuna.create_study().ask(), space)
    assert values["technique"] == "lora" and "technique.r" in values


@pytest.mark.parametrize("value", [None, True, 3, 1e-4, 0.1 + 0.2, "lora", "all-linear",
                                   "16", "null", "a b", "it's", [1, "x"], {"a": 1}])
def test_override_values_parse_back_unchanged(value):
    parsed = parse_overrides([f"x={format_value(value)}"])[0].value()
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_file_composes(compose_cfg, tmp_path, path):
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith(f"# harness-sweep {path.stem}")
    cfg = compose_cfg([f"+sweeps={path.stem}"], tmp_path, hydra=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper.study_name == path.stem
    space, _ = space_of(cfg)
    validate_space(space, cfg, group_options(cfg))
    objectives = parse_objectives(list(sweeper.objectives))
    make_pruner(dict(sweeper.pruner))
    spec = dict(sweeper.sampler)
    make_sampler(spec, grid(space) if spec["name"] == "grid" else None, 0)
    study = optuna.create_study(directions=[o.direction for o in objectives])
    for params in sweeper.enqueue:
        study.enqueue_trial(dict(params))
    for _ in range(3):
        trial = study.ask()
        for override in to_overrides(space, sample(trial, space)):
            compose_cfg([f"+sweeps={path.stem}", override], tmp_path)
        study.tell(trial, state=TrialState.FAIL)


# ---------------------------------------------------------------- pruning and storage
def _study(tmp_path, directions, pruner):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="t", storage=storage, directions=directions)
    study.set_user_attr(SETTINGS_ATTR, {"pruner": pruner, "prune_metric": "eval/loss",
                                        "prune_direction": "minimize"})
    return study, storage


def _trial_cfg(compose_cfg, tmp_path, storage, number):
    return compose_cfg(["trial.study_name=t", f"trial.storage={storage}",
                        f"trial.number={number}"], tmp_path)


def test_pruning_monitor_reports_negated_loss_and_stops(compose_cfg, tmp_path):
    from harness.sweep.pruning import trial_monitors

    study, storage = _study(tmp_path, ["maximize"], {"name": "median", "n_startup_trials": 2})
    for acc, loss in ((0.5, 2.0), (0.4, 2.2)):
        trial = study.ask()
        trial.report(-loss, 10)
        study.tell(trial, acc)
    good, trial = study.ask(), study.ask()
    [ahead] = trial_monitors(_trial_cfg(compose_cfg, tmp_path, storage, good.number))
    assert ahead.report({"eval/loss": 1.0}, 10) is None  # better than the others: go on
    [monitor] = trial_monitors(_trial_cfg(compose_cfg, tmp_path, storage, trial.number))
    reason = monitor.report({"eval/loss": 3.0}, 10)
    assert reason.startswith("pruned at step 10: eval/loss=3")
    assert study.trials[trial.number].intermediate_values == {10: -3.0}
    assert not monitor.eval_on_start  # only the learning-curve pruner needs a step-0 report


def test_learning_curve_pruner_asks_its_trials_for_a_step_0_report(compose_cfg, tmp_path):
    from harness.sweep.pruning import trial_monitors

    study, storage = _study(tmp_path, ["minimize"], {"name": "learning_curve"})
    [monitor] = trial_monitors(_trial_cfg(compose_cfg, tmp_path, storage, study.ask().number))
    assert monitor.eval_on_start


def test_no_pruning_for_multi_objective_or_pruner_none(compose_cfg, tmp_path):
    from harness.sweep.pruning import trial_monitors

    study, storage = _study(tmp_path, ["maximize", "minimize"], {"name": "median"})
    cfg = _trial_cfg(compose_cfg, tmp_path, storage, study.ask().number)
    assert trial_monitors(cfg) == []
    assert trial_monitors(compose_cfg([], tmp_path)) == []  # not in a sweep


def test_interrupted_trials_fail_with_reason_and_come_back(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    dead, live = study.ask({"x": optuna.distributions.IntDistribution(0, 9)}), study.ask()
    dead.set_user_attr("sweeper", {"host": socket.gethostname(), "pid": 2**22 + 12345})
    live.set_user_attr("sweeper", {"host": socket.gethostname(), "pid": os.getpid()})
    again = recover_interrupted(study)
    assert again == [dict(dead.params)]
    frozen = study.trials[dead.number]
    assert frozen.state == TrialState.FAIL and "interrupted" in frozen.user_attrs["error"]
    assert study.trials[live.number].state == TrialState.RUNNING


def test_objectives_are_checked_before_the_first_trial():
    objectives = parse_objectives([{"metric": "eval/mmlu/acc", "direction": "maximize"}])
    check_objectives(objectives, ["task", "mmlu"])
    with pytest.raises(ConfigError, match="needs 'mmlu' in eval.tasks"):
        check_objectives(objectives, ["task"])
    with pytest.raises(ConfigError, match="not a record metric"):
        check_objectives(parse_objectives([{"metric": "accuracy"}]), ["task"])
    with pytest.raises(ConfigError, match="direction"):
        parse_objectives([{"metric": "cost/usd", "direction": "down"}])


def test_outcome_from_record():
    objectives = [Objective("eval/task/acc", "maximize"), Objective("cost/usd", "minimize")]
    done = {"status": "complete", "metrics": {"eval/task/acc": 0.5, "cost/usd": 0.1}}
    assert outcome_from_record(done, objectives).values == [0.5, 0.1]
    assert outcome_from_record({"status": "running"}, objectives) is None
    assert outcome_from_record(None, objectives) is None
    pruned = outcome_from_record({"status": "pruned", "pruned_at_step": 4}, objectives)
    assert (pruned.state, pruned.step) == (TrialState.PRUNED, 4)
    failed = outcome_from_record({"status": "failed", "error": "TrainingError: nan"}, objectives)
    assert (failed.state, failed.reason) == (TrialState.FAIL, "TrainingError: nan")
    nan = {"status": "complete", "metrics": {"eval/task/acc": None, "cost/usd": 0.1}}
    assert outcome_from_record(nan, objectives).state == TrialState.FAIL
    with pytest.raises(ConfigError, match="cost/usd"):
        outcome_from_record({"status": "complete", "metrics": {"eval/task/acc": 1}}, objectives)


# ---------------------------------------------------------------- sweeps of a stand-in trial
# Imported by every Python process of the sweep (sitecustomize): the trial's training and
# evaluation become a formula of the learning rate; everything around them is the real code.
STAND_IN = '''
import math, os, time

import harness.trial.run as run_module
from harness.config.errors import TrainingError


def formula(cfg, record, monitors, progress):
    loss = None
    for step in range(2, int(cfg.train.max_steps) + 1, 2):
        if cfg.train.inject_nan_at_step is not None and step >= cfg.train.inject_nan_at_step:
            raise TrainingError(f"training loss became nan at step {step}")
        loss = 2.0 + abs(math.log10(cfg.optimizer.lr) + 3.5) - 0.01 * step
        time.sleep(float(os.environ.get("FAKE_STEP_S", "0")))
        progress.steps, progress.train_tokens = step, progress.train_tokens + 100
        progress.history.append({"step": step, "eval/loss": loss})
        for monitor in monitors:
            reason = monitor.report({"eval/loss": loss}, step)
            if reason is not None:
                progress.stopped_at, progress.stop_reason = step, reason
                return {"train/steps": float(step)}
    return {"eval/loss": loss, "eval/task/acc": 1.0 / loss, "cost/usd": 0.01}


run_module._pipeline = formula
'''
FAKE_SWEEP = [
    "model=tiny_random", "eval=smoke", "train.max_steps=6", "hydra.sweeper.study_name=fake",
    "hydra.sweeper.n_trials=3", "optimizer.lr=tag(log, interval(1e-5, 1e-2))",
]
# trial 0, 1: good learning rates; 2: NaN loss; 3: a far-off rate, pruned at its first report
FAKE_PLAN = [
    "+hydra.sweeper.pruner.n_startup_trials=2", "train.inject_nan_at_step=2,1000",
    "hydra.sweeper.enqueue=[{optimizer.lr:3e-4,train.inject_nan_at_step:1000},"
    "{optimizer.lr:1e-3,train.inject_nan_at_step:1000},"
    "{optimizer.lr:3e-4,train.inject_nan_at_step:2},"
    "{optimizer.lr:1e-5,train.inject_nan_at_step:1000}]",
]
NO_PRUNING = ["hydra.sweeper.pruner.name=none"]


def run_fake(tmp_path: Path, *extra: str, env: dict | None = None, background: bool = False):
    """`harness-train --multirun` (the real entry point) with the stand-in trial."""
    site = tmp_path / "stand_in"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(STAND_IN)
    cmd = [str(BIN / "harness-train"), "--multirun", f"paths.output_dir={tmp_path / 'out'}",
           *FAKE_SWEEP, *extra]
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    kwargs = {"cwd": tmp_path, "text": True,
              "env": {**os.environ, "PYTHONPATH": path, **(env or {})}}
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
    out = subprocess.run(cmd, capture_output=True, timeout=300, **kwargs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def load_study(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'sweeps' / name / 'study.db'}")


def records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/record.json")}


def test_pruned_failed_and_memoized_trials(tmp_path):
    run_fake(tmp_path, *FAKE_PLAN)
    out = tmp_path / "out"
    study = load_study(out, "fake")
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    recs = {t.number: records(out)[t.user_attrs["config_hash"]] for t in study.trials}
    assert (recs[3]["status"], recs[3]["pruned_at_step"]) == ("pruned", 2)
    assert recs[3]["sweep"] == {"study_name": "fake", "trial_number": 3}
    assert recs[2]["status"] == "failed" and "nan" in recs[2]["error"]
    assert study.trials[2].user_attrs["error"] == recs[2]["error"]
    table = pd.read_csv(out / "sweeps" / "fake" / "study.csv")
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    assert table["value"].notna().tolist() == [True, True, False, False]
    best = yaml.safe_load((out / "sweeps" / "fake" / "best.yaml").read_text())
    assert best["trials"][0]["trial"] == 0
    assert best["trials"][0]["config_hash"] == study.trials[0].user_attrs["config_hash"]

    # The study is lost, the records are not: complete runs are told from their records.
    (out / "sweeps" / "fake" / "study.db").unlink()
    before = {h: (out / "runs" / h / "record.json").stat().st_mtime_ns for h in records(out)}
    run_fake(tmp_path, *FAKE_PLAN)
    again = load_study(out, "fake")
    assert [t.user_attrs.get("cache_hit", False) for t in again.trials[:2]] == [True, True]
    assert again.trials[0].values == study.trials[0].values
    for t in again.trials[:2]:
        chash = t.user_attrs["config_hash"]
        assert (out / "runs" / chash / "record.json").stat().st_mtime_ns == before[chash]


def test_sigkill_mid_trial_then_resume(tmp_path):
    out = tmp_path / "out"
    proc = run_fake(tmp_path, *NO_PRUNING, env={"FAKE_STEP_S": "1.5"}, background=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once one trial is done and the next one is training
        statuses = [r["status"] for r in records(out).values()] if (out / "runs").exists() else []
        if statuses.count("complete") >= 1 and "running" in statuses:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the sweep never reached its second trial: " + proc.communicate()[0][-2000:])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {h for h, r in records(out).items() if r["status"] == "complete"}
    interrupted = {h for h, r in records(out).items() if r["status"] == "running"}

    run_fake(tmp_path, *NO_PRUNING)
    study = load_study(out, "fake")
    hashes = {state: set() for state in TrialState}
    for t in study.trials:
        hashes[t.state].add(t.user_attrs["config_hash"])
    assert done_before <= hashes[TrialState.COMPLETE]  # kept, not trained again
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["error"].startswith("interrupted")
    assert interrupted <= hashes[TrialState.COMPLETE]  # re-run to completion
    assert len(hashes[TrialState.COMPLETE]) == 3
    assert all(r["status"] != "running" for r in records(out).values())  # all parse, none stuck


def heartbeats(out: Path, name: str = "fake") -> dict[int, dict]:
    folder = out / "sweeps" / name / ".workers"
    beats = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []
    return {b["index"]: b for b in beats}


def test_async_workers_pull_trials_from_the_shared_study(tmp_path):
    run_fake(tmp_path, *NO_PRUNING, "hydra/launcher=local", "hydra.sweeper.workers=2",
             "hydra.sweeper.n_trials=4", env={"FAKE_STEP_S": "0.5"})
    out = tmp_path / "out"
    study = load_study(out, "fake")
    assert 4 <= sum(t.state == TrialState.COMPLETE for t in study.trials) <= 5  # see docs
    assert {t.user_attrs["worker"]["index"] for t in study.trials} == {0, 1}  # both pulled
    assert len({t.user_attrs["invocation"] for t in study.trials}) == 1
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    assert len(pids) == 2 and os.getpid() not in pids  # trials ran in the worker jobs
    for t in study.trials:
        assert records(out)[t.user_attrs["config_hash"]]["status"] == "complete"
    assert all(b["done"] for b in heartbeats(out).values()) and len(heartbeats(out)) == 2
    # memoized like batch mode: a second run of the same command trains nothing
    before = {h: (out / "runs" / h / "record.json").stat().st_mtime_ns for h in records(out)}
    (out / "sweeps" / "fake" / "study.db").unlink()
    run_fake(tmp_path, *NO_PRUNING, "hydra/launcher=local", "hydra.sweeper.workers=2",
             "hydra.sweeper.n_trials=2")
    again = load_study(out, "fake")
    hits = [t for t in again.trials if t.user_attrs.get("cache_hit")]
    assert hits and all(
        (out / "runs" / t.user_attrs["config_hash"] / "record.json").stat().st_mtime_ns
        == before[t.user_attrs["config_hash"]] for t in hits)


def test_async_worker_killed_mid_trial_fails_it_and_the_sweep_goes_on(tmp_path):
    out = tmp_path / "out"
    proc = run_fake(tmp_path, *NO_PRUNING, "hydra/launcher=local", "hydra.sweeper.workers=2",
                    "hydra.sweeper.n_trials=3", env={"FAKE_STEP_S": "2", "HARNESS_HEARTBEAT_S": "1"},
                    background=True)
    deadline, victim = time.time() + 180, None
    while victim is None and time.time() < deadline and proc.poll() is None:
        running = [r for r in records(out).values() if r["status"] == "running"] \
            if (out / "runs").exists() else []
        workers = {b["pid"] for b in heartbeats(out).values()}
        victim = next((r["env"]["pid"] for r in running if r["env"]["pid"] in workers), None)
        time.sleep(0.3)
    assert victim, "no worker started a trial: " + proc.communicate()[0][-3000:]
    os.kill(victim, signal.SIGKILL)  # a worker job dies mid-trial (OOM killer, node loss)
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]
    study = load_study(out, "fake")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, [(t.number, t.state.name) for t in study.trials]
    reason = failed[0].user_attrs["error"]
    assert "ended before the trial finished" in reason and "UncompletedJobError" in reason
    assert records(out)[failed[0].user_attrs["config_hash"]]["status"] in ("failed", "complete")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) >= 3
    # its parameters were enqueued again and finished by a worker of the next round
    assert failed[0].params in [t.params for t in done]
    assert all(r["status"] != "running" for r in records(out).values())


# ---------------------------------------------------------------- the real pipeline
def harness_sweep(tmp_path: Path, *args: str, check: bool = True):
    env = {**os.environ, "HARNESS_CACHE": os.environ.get("HARNESS_CACHE", str(tmp_path / "cache"))}
    start = time.perf_counter()
    out = subprocess.run([str(BIN / "harness-sweep"), "smoke", *args], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=600)
    if check:
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out, time.perf_counter() - start


@pytest.mark.slow
def test_smoke_sweep_then_rerun_trains_nothing(tmp_path):
    out_dir = tmp_path / "out"
    harness_sweep(tmp_path, f"paths.output_dir={out_dir}")
    study = load_study(out_dir, "smoke")
    assert len(study.trials) == 6
    assert {t.params["technique"] for t in study.trials} == {"full", "lora", "qlora", "dora"}
    recs = records(out_dir)
    for t in study.trials:  # storage and records agree
        rec = recs[t.user_attrs["config_hash"]]
        assert rec["status"] == {"COMPLETE": "complete", "PRUNED": "pruned"}[t.state.name]
        if t.state == TrialState.PRUNED:
            assert rec["pruned_at_step"] in t.intermediate_values
            # what a pruned trial spent before it stopped stays in its record
            assert rec["metrics"]["train/steps"] == rec["pruned_at_step"]
            assert rec["metrics"]["perf/train_tokens"] > 0
        assert ("technique.r" in t.params) == (t.params["technique"] != "full")
    assert (out_dir / "sweeps" / "smoke" / "best.yaml").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in (out_dir / "runs").glob("*/record.json")}
    result, _ = harness_sweep(tmp_path, f"paths.output_dir={out_dir}")
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert "best trial" in result.stdout

    # any trial of the sweep reproduces from its hash with every delta zero (issue: reproduce)
    chash = next(t.user_attrs["config_hash"] for t in study.trials
                 if t.state == TrialState.COMPLETE and t.params["technique"] != "full")
    env = {**os.environ, "HARNESS_CACHE": os.environ.get("HARNESS_CACHE", str(tmp_path / "cache"))}
    rerun = subprocess.run([str(BIN / "harness-reproduce"), chash[:12], "--outputs", str(out_dir)],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "metrics within tolerance 0.0" in rerun.stdout


@pytest.mark.slow
def test_real_nan_trial_fails_with_reason_and_sweep_completes(tmp_path):
    out_dir = tmp_path / "out"
    harness_sweep(tmp_path, f"paths.output_dir={out_dir}", "hydra.sweeper.study_name=nan",
                  "hydra.sweeper.n_trials=2", "technique=lora", "train.inject_nan_at_step=1,1000",
                  "hydra.sweeper.enqueue=[{train.inject_nan_at_step:1},"
                  "{train.inject_nan_at_step:1000},{train.inject_nan_at_step:1000}]")
    study = load_study(out_dir, "nan")
    assert [t.state for t in study.trials][:2] == [TrialState.FAIL, TrialState.COMPLETE]
    reason = study.trials[0].user_attrs["error"]
    assert "nan" in reason.lower()
    assert records(out_dir)[study.trials[0].user_attrs["config_hash"]]["error"] == reason


@pytest.mark.slow
def test_submitit_local_launcher_survives_a_killed_trial(tmp_path):
    out = tmp_path / "out"
    proc = run_fake(tmp_path, *NO_PRUNING, "hydra/launcher=local", "hydra.sweeper.n_jobs=2",
                    "hydra.sweeper.n_trials=2", env={"FAKE_STEP_S": "3"}, background=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        running = [r for r in records(out).values() if r["status"] == "running"] \
            if (out / "runs").exists() else []
        if len(running) == 2:
            break
        time.sleep(0.5)
    os.kill(running[0]["env"]["pid"], signal.SIGKILL)  # one trial "runs out of memory"
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]
    study = load_study(out, "fake")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "UncompletedJobError" in failed[0].user_attrs["error"]
    assert records(out)[failed[0].user_attrs["config_hash"]]["status"] == "failed"
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 2

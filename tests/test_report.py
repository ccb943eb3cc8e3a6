"""`harness-report` over a fixture set of records written here (docs/internals.md format).

    pytest tests/test_report.py                 # tables, Pareto front, significance, files
    pytest tests/test_report.py -m slow         # + the HTML in headless Chromium

The fixture holds complete full / LoRA (two ranks) / QLoRA / DoRA runs with per-example
eval results chosen so the Pareto front and the McNemar p-values are known by hand, plus a
pruned, a failed, an incomplete, an old-format and a corrupt record.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest

from analysis import report, tables
from analysis.records import load_runs, load_studies

N_EXAMPLES = 100
FIELDS = ("category", "priority", "product", "order_id", "amount", "date")
# name: (technique, rank, lr, status, task acc, usd, ids the run gets right)
RUNS = {
    "full": ("full", None, 2e-5, "complete", 0.70, 0.100, range(0, 70)),
    # dora vs full: 10 examples only full gets right, 5 only dora -> p = 0.30 (exact McNemar)
    "dora16": ("dora", 16, 2e-4, "complete", 0.65, 0.030, [*range(0, 60), *range(70, 75)]),
    "lora16": ("lora", 16, 2e-4, "complete", 0.60, 0.020, range(0, 60)),
    "lora16_slow": ("lora", 16, 1e-4, "complete", 0.45, 0.025, range(0, 45)),  # dominated
    "qlora16": ("qlora", 16, 2e-4, "complete", 0.55, 0.010, range(0, 55)),
    "lora8": ("lora", 8, 2e-4, "complete", 0.50, 0.015, range(0, 50)),  # dominated by qlora
    "lora16_pruned": ("lora", 16, 5e-4, "pruned", None, None, None),
    "dora16_failed": ("dora", 16, 1e-3, "failed", None, None, None),
}


def fake_hash(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(name: str, technique: str, rank: int | None, lr: float, status: str,
           acc: float | None, usd: float | None) -> dict:
    tech = {"name": technique} if rank is None else {"name": technique, "r": rank, "alpha": 2 * rank}
    metrics = {}
    if acc is not None:
        metrics = {"eval/task/acc": acc, "eval/task/acc_delta": acc - 0.05,
                   "eval/mmlu/acc": 0.25, "eval/mmlu/acc_delta": -0.01,
                   "eval/perplexity/ppl": 5.0, "cost/usd": usd, "cost/device_hours": usd / 4,
                   "perf/tokens_per_s": 1000.0, "mem/peak_gb": 2.0,
                   "params/trainable": 1e5, "params/total": 1e7,
                   "eval/task/acc_stderr": (acc * (1 - acc) / N_EXAMPLES) ** 0.5}
        for i, field in enumerate(FIELDS):  # what the demo scorer records, one score a field
            metrics[f"eval/task/{field}_acc"] = min(1.0, acc + 0.05 * i)
            metrics[f"eval/task/{field}_acc_stderr"] = 0.04
    overrides = [f"technique={technique}", f"optimizer.lr={lr}"]
    return {
        "format_version": 1, "config_hash": fake_hash(name), "status": status,
        "error": "FloatingPointError: loss is NaN" if status == "failed" else None,
        "pruned_at_step": 25 if status == "pruned" else None,
        "created_at": f"2026-03-0{1 + len(name) % 8}T12:00:00+00:00",
        "updated_at": "2026-03-09T12:00:00+00:00",
        "command": "harness-train " + " ".join(overrides), "overrides": overrides,
        "config": {"model": {"name": "tiny_random"}, "technique": tech,
                   "optimizer": {"name": "adamw", "lr": lr, "betas": [0.9, 0.999]},
                   "offline": "auto" if rank else True, "seed": 42},
        "metrics": metrics, "data": {},
        "history": [{"step": step, "train/loss": 2.0 / step + (1 - acc)} for step in
                    range(1, 31)] + [{"step": step, "eval/loss": 2.2 / step + (1 - acc)}
                                     for step in (10, 20, 30)] if acc else [],
        "base_metrics": {"eval/task/acc": 0.05, "eval/mmlu/acc": 0.26,
                         **{f"eval/task/{field}_acc": 0.1 for field in FIELDS}} if acc else {},
        "sweep": {"study_name": "s1", "trial_number": 0} if technique == "lora" else None,
        "env": {"host": socket.gethostname(), "pid": 1},
    }


def write_run(root: Path, name: str, spec: tuple) -> Path:
    technique, rank, lr, status, acc, usd, correct = spec
    folder = root / "runs" / fake_hash(name)
    (folder / "eval").mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps(record(name, technique, rank, lr, status,
                                                          acc, usd)))
    if correct is not None:
        right = set(correct)
        lines = [json.dumps({"id": f"ex{i}", "correct": int(i in right), "pred": "", "ref": ""})
                 for i in range(N_EXAMPLES)]
        (folder / "eval" / "task.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    """An outputs dir with the runs above and four broken records."""
    root = tmp_path / "outputs"
    for name, spec in RUNS.items():
        write_run(root, name, spec)
    broken = root / "runs"
    (broken / "incomplete").mkdir()
    (broken / "incomplete" / "record.json").write_text(json.dumps(
        {"format_version": 1, "config_hash": fake_hash("incomplete"), "status": "complete"}))
    (broken / "corrupt").mkdir()
    (broken / "corrupt" / "record.json").write_text('{"format_version": 1, "status": "comp')
    old = record("old", "lora", 16, 2e-4, "complete", 0.9, 0.001)
    old["format_version"] = 0
    (broken / "old").mkdir()
    (broken / "old" / "record.json").write_text(json.dumps(old))
    return root


def test_records_load_with_broken_ones_listed(outputs: Path):
    runs = load_runs(outputs)
    assert len(runs) == len(RUNS) + 3
    by_folder = runs.set_index(runs["folder"].map(lambda f: Path(f).name))
    assert by_folder.loc["incomplete", "status"] == "incomplete"
    assert "missing keys: created_at, config, metrics" in by_folder.loc["incomplete", "reason"]
    assert by_folder.loc["corrupt", "status"] == "invalid"
    assert by_folder.loc["corrupt", "reason"].startswith("unreadable record")
    assert by_folder.loc["old", "status"] == "invalid"
    assert "format_version 0" in by_folder.loc["old", "reason"]
    full = by_folder.loc[fake_hash("full")]
    assert full["technique"] == "full" and full["config.optimizer.lr"] == 2e-5
    assert full["reproduce"] == f"harness-reproduce {fake_hash('full')}"
    assert full["params/trainable_share"] == pytest.approx(0.01)


@pytest.mark.parametrize("text, status", [
    ("[1, 2]", "invalid"),
    ("", "invalid"),
    ('{"format_version": 2}', "invalid"),
    (json.dumps({"format_version": 1, "config_hash": "x", "status": "complete",
                 "created_at": "yesterday", "config": {"technique": "lora"},
                 "metrics": {"eval/task/acc": "n/a"}}), "incomplete"),
    (json.dumps({"format_version": 1, "config_hash": "y", "status": "done", "created_at": None,
                 "config": {"technique": {"name": "lora"}}, "metrics": []}), "incomplete"),
])
def test_malformed_records_never_crash_the_report(tmp_path: Path, text: str, status: str):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "record.json").write_text(text)
    written = report.write_report(tmp_path)
    assert load_runs(tmp_path)["status"].tolist() == [status]
    assert "Records that could not be used" in written["md"].read_text()


def test_reads_records_written_by_the_harness(tmp_path: Path):
    """The producer's own writer (harness.trial.record.Record), not a hand-made dict."""
    from omegaconf import OmegaConf

    from harness.trial.record import Record, run_dir

    cfg = OmegaConf.create({"technique": {"name": "qlora", "r": 8, "target_modules": ["q_proj"]},
                            "optimizer": {"lr": 1e-4}, "offline": "auto",
                            "paths": {"output_dir": str(tmp_path)},
                            "trial": {"study_name": "smoke", "number": 3}})
    rec = Record.start(run_dir(tmp_path, "ab" * 32), cfg, "ab" * 32, "harness-train", [])
    rec.update(status="complete", metrics={"eval/task/acc": 0.5, "cost/usd": float("nan")},
               base_metrics={"eval/task/acc": 0.1})
    run = load_runs(tmp_path).iloc[0]
    assert (run["status"], run["technique"], run["sweep"]) == ("complete", "qlora r8", "smoke")
    assert run["eval/task/acc_delta"] == pytest.approx(0.4)  # derived from base_metrics
    assert pd.isna(run["cost/usd"])  # NaN is stored as null
    assert tables.pareto_front(load_runs(tmp_path)).empty  # no price: not on the cost axis


def test_technique_summary(outputs: Path):
    summary = tables.technique_summary(load_runs(outputs)).set_index("technique")
    assert list(summary.index) == ["full", "dora r16", "lora r16", "qlora r16", "lora r8"]
    counts = summary[["runs", "complete", "pruned", "failed", "other"]]
    assert counts.loc["lora r16"].tolist() == [4, 2, 1, 0, 1]  # + the old-format record
    assert counts.loc["dora r16"].tolist() == [2, 1, 0, 1, 0]
    assert counts.loc["full"].tolist() == [1, 1, 0, 0, 0]
    assert summary.loc["lora r16", "best_acc"] == pytest.approx(0.60)
    assert summary.loc["lora r16", "median_acc"] == pytest.approx(0.525)
    assert summary.loc["lora r16", "cost/usd"] == pytest.approx(0.0225)
    assert summary.loc["full", "eval/mmlu/acc_delta"] == pytest.approx(-0.01)
    assert summary.loc["full", "best_run"] == fake_hash("full")
    assert {"eval/mmlu/acc", "eval/perplexity/ppl"} <= set(summary.columns)


@pytest.mark.parametrize(("accs", "winner", "first"), [
    ({"full": 0.0, "lora": 0.0, "dora": 0.0}, None,
     "No single winner: dora r16, full, lora r16 are statistically indistinguishable on exact "
     "match"),
    ({"full": 0.5, "lora": 0.25, "dora": 0.5}, None,
     "No single winner: dora r16, full are statistically indistinguishable"),
    ({"full": 0.05, "lora": 0.75, "dora": 0.45}, "lora r16", "Winner: lora r16, exact match "
     "0.750 [0.657, 0.825] (95% CI), at $0.01 a run"),
])
def test_verdict_names_a_winner_only_when_the_tests_do(tmp_path: Path, accs: dict,
                                                         winner: str | None, first: str):
    for tech, acc in accs.items():  # nested sets of right answers: a beats b on all discordant
        write_run(tmp_path, tech, (tech, None if tech == "full" else 16, 1e-4, "complete",
                                   acc, 0.01, range(round(acc * N_EXAMPLES))))
    runs = load_runs(tmp_path)
    best = tables.technique_best(runs, tables.ACC)
    answer = tables.verdict(best, tables.pairwise(best, tables.ACC), tables.ACC)
    assert answer["winner"] == winner
    assert answer["sentences"][0].startswith(first)
    if accs["full"] == accs["lora"] == 0.0:  # all tie: ranked by cost, then hash, never a winner
        assert answer["sentences"][0].endswith("no margin to plan a larger test for.")
        assert answer["sentences"][-1] == "No pair of techniques differs significantly at α = 0.05."


def test_ties_go_to_the_cheaper_run(tmp_path: Path):
    write_run(tmp_path, "dear", ("lora", 16, 1e-4, "complete", 0.5, 0.05, range(50)))
    write_run(tmp_path, "cheap", ("lora", 16, 2e-4, "complete", 0.5, 0.01, range(50)))
    best = tables.technique_best(load_runs(tmp_path), tables.ACC)
    assert best["config_hash"].tolist() == [fake_hash("cheap")]


def test_pareto_front(outputs: Path):
    front = tables.pareto_front(load_runs(outputs))
    assert front["technique"].tolist() == ["qlora r16", "lora r16", "dora r16", "full"]
    assert front["cost/usd"].tolist() == [0.010, 0.020, 0.030, 0.100]
    assert front["eval/task/acc"].tolist() == [0.55, 0.60, 0.65, 0.70]
    assert front["config_hash"].tolist() == [fake_hash(n) for n in
                                             ("qlora16", "lora16", "dora16", "full")]


def test_pareto_mask_keeps_ties():
    mask = tables.pareto_mask([1.0, 1.0, 2.0, 0.5], [0.5, 0.5, 0.5, 0.1])
    assert mask.tolist() == [True, True, False, True]


def test_pairwise_tests_every_pair_with_holm(outputs: Path):
    best = tables.technique_best(load_runs(outputs), tables.ACC)
    assert best["technique"].tolist() == ["full", "dora r16", "lora r16", "qlora r16", "lora r8"]
    pairs = tables.pairwise(best, tables.ACC).set_index(["a", "b"])
    assert len(pairs) == 10  # 5 techniques, every pair once
    # full vs lora r16: 10 discordant examples, all for full: p = 2 * 0.5**10 (exact McNemar)
    full_lora = pairs.loc[("full", "lora r16")]
    assert full_lora["p"] == pytest.approx(2 * 0.5 ** 10)
    assert full_lora["p_holm"] == pytest.approx(7 * 2 * 0.5 ** 10)  # 4th smallest of 10 p's
    assert full_lora["significant"] and full_lora["diff_pts"] == pytest.approx(10.0)
    dora = pairs.loc[("full", "dora r16")]
    assert dora["p"] == pytest.approx(0.3018, abs=1e-4) and not dora["significant"]
    assert dora["sentence"] == (
        "full vs dora r16: +5.0 pts of exact match (95% CI -2.7 to +12.7), not significant "
        "(p = 0.30, Holm-adjusted = 0.30; exact McNemar test, 100 paired examples); about 794 "
        "paired examples would detect a difference this size at 80% power.")
    answer = tables.verdict(best, tables.pairwise(best, tables.ACC), tables.ACC)
    assert answer["winner"] is None and answer["top_group"] == ["full", "dora r16"]
    assert answer["best_for_money"] == "dora r16" and answer["needed"] == 794


def test_partial_credit_uses_a_paired_permutation_test(tmp_path: Path):
    """Mean field accuracy is not 0/1: the permutation test pairs the per-example shares."""
    for name, shift in (("lora", 0.0), ("full", 1 / 6)):
        folder = write_run(tmp_path, name, (name, 16 if name == "lora" else None, 1e-4,
                                            "complete", 0.5, 0.01, range(50)))
        rows = [{"id": f"ex{i}", "correct": 0, "field_acc": min(1.0, (i % 6) / 6 + shift)}
                for i in range(N_EXAMPLES)]
        (folder / "eval" / "task.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
        record_path = folder / "record.json"
        data = json.loads(record_path.read_text())
        data["metrics"]["eval/task/field_acc"] = sum(r["field_acc"] for r in rows) / N_EXAMPLES
        record_path.write_text(json.dumps(data))
    runs = load_runs(tmp_path)
    assert tables.objective_metric(runs) == tables.FIELD_ACC
    best = tables.technique_best(runs, tables.FIELD_ACC)
    pair = tables.pairwise(best, tables.FIELD_ACC).iloc[0]
    assert (pair["a"], pair["b"], pair["method"]) == ("full", "lora r16", "paired permutation")
    assert pair["p"] < 0.001 and pair["significant"]
    assert pair["diff_pts"] == pytest.approx(100 / 6)  # one more field right on every row


def test_pairwise_without_eval_files(outputs: Path):
    shutil.rmtree(outputs / "runs" / fake_hash("dora16") / "eval")
    best = tables.technique_best(load_runs(outputs), tables.ACC)
    sentence = tables.pairwise(best, tables.ACC)["sentence"][0]
    assert sentence == "full vs dora r16: no per-example results to pair, not tested."


def test_best_so_far_from_records_and_study_csv(outputs: Path):
    runs = load_runs(outputs)
    progress = tables.best_so_far(runs, load_studies(outputs))
    adhoc = progress[progress["study"] == "ad-hoc"]
    assert adhoc["best"].is_monotonic_increasing and adhoc["best"].iloc[-1] == 0.70
    study = outputs / "sweeps" / "s1"
    study.mkdir(parents=True)
    pd.DataFrame({"number": [0, 1, 2, 3], "state": ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE"],
                  "values_0": [0.45, None, 0.60, 0.33],
                  "config_hash": [fake_hash("lora16_slow"), fake_hash("lora16_pruned"),
                                  fake_hash("lora16"), "not-a-record"]},
                 ).to_csv(study / "study.csv", index=False)
    progress = tables.best_so_far(runs, load_studies(outputs))
    assert progress["trial"].tolist() == [0, 2, 3]
    assert progress["acc"].tolist() == [0.45, 0.60, 0.33]  # last from the csv's value
    assert progress["best"].tolist() == [0.45, 0.60, 0.60]


def test_filters(outputs: Path):
    assert set(load_runs(outputs, technique="lora")["technique"]) == {"lora r16", "lora r8"}
    assert set(load_runs(outputs, technique="lora r8")["technique"]) == {"lora r8"}
    assert set(load_runs(outputs, sweep="s1")["technique_name"]) == {"lora"}
    recent = load_runs(outputs, since="2026-03-05")
    assert len(recent) and (recent["created_at"] >= pd.Timestamp("2026-03-05", tz="UTC")).all()


def test_cli_writes_every_file(outputs: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    assert report.main([str(outputs), "--out", str(out)]) == 0
    names = {"report.md", "report.html", "runs.csv", "runs.parquet", "summary.json",
             "pareto.png", "learning_curves.png", "fields.png", "acc_vs_rank.png",
             "acc_vs_lr.png", "best_so_far.png"}
    assert names <= {p.name for p in out.iterdir()}
    assert len(capsys.readouterr().out.splitlines()) == len(names)
    assert len(pd.read_parquet(out / "runs.parquet")) == len(RUNS) + 3
    assert len(pd.read_csv(out / "runs.csv")) == len(RUNS) + 3
    md = (out / "report.md").read_text()
    assert "full vs dora r16: +5.0 pts of exact match (95% CI -2.7 to +12.7), not significant" in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "eval/task/acc" and summary["winner"] is None
    assert [t["technique"] for t in summary["techniques"]][:2] == ["full", "dora r16"]
    assert summary["techniques"][0]["best_run"] == fake_hash("full")
    assert len(summary["pairwise"]) == 10
    first = summary["pairwise"][0]
    assert (first["a"], first["b"], first["n"], first["significant"]) == ("full", "dora r16",
                                                                         100, False)
    assert f"harness-reproduce {fake_hash('qlora16')}" in md
    assert "Records that could not be used" in md and "unreadable record" in md
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 6
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_default_out_dir_and_empty_source(tmp_path: Path):
    written = report.write_report(tmp_path)
    assert written["md"].parent == tmp_path / "reports"
    assert "No runs found" in written["md"].read_text()
    assert all(p.exists() for p in written.values())


def test_cli_rejects_missing_folder(tmp_path: Path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_html_renders_in_headless_chromium(outputs: Path, tmp_path: Path, chromium):
    from selenium.webdriver.common.by import By

    out = tmp_path / "report"
    report.write_report(outputs, out)
    chromium.get((out / "report.html").as_uri())
    assert chromium.title == report.TITLE
    assert chromium.find_element(By.TAG_NAME, "h1").text == report.TITLE
    images = chromium.find_elements(By.TAG_NAME, "img")  # every figure decoded and drawn
    assert len(images) == 6
    assert all(chromium.execute_script("return arguments[0].complete && "
                                       "arguments[0].naturalWidth > 0", i) for i in images)
    assert all(i.size["width"] > 200 and i.size["height"] > 100 for i in images)
    severe = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    height = chromium.execute_script("return document.body.scrollHeight")
    chromium.set_window_size(1600, min(height + 100, 8000))
    assert chromium.save_screenshot(str(out / "screenshot.png"))

    from PIL import Image

    shot = Image.open(out / "screenshot.png").convert("RGB")
    # Not a blank or error page: the plots' colours are on it, not just text on white.
    assert len(shot.getcolors(maxcolors=1 << 20) or []) > 500


def test_hyperparameter_importance_needs_enough_trials(outputs: Path, tmp_path: Path):
    import optuna

    from harness.sweep import study as study_lib

    objectives = [study_lib.Objective("eval/task/field_acc", "maximize"),
                  study_lib.Objective("cost/usd", "minimize")]
    folder = outputs / "sweeps" / "s1"
    folder.mkdir(parents=True)
    study = study_lib.open_study("s1", f"sqlite:///{folder / 'study.db'}", objectives)
    space = {"optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
             "technique.r": optuna.distributions.CategoricalDistribution([8, 16, 32])}
    for i in range(3):
        study.add_trial(optuna.trial.create_trial(
            params={"optimizer.lr": 10 ** (-5 + i), "technique.r": 8},
            distributions=space, values=[0.1 * i, 0.01]))
    out = report.write_report(outputs, tmp_path / "few")
    assert "importance" not in out
    assert ("s1: 3 complete trials; hyperparameter importance needs at least 8"
            in out["md"].read_text())
    for i in range(9):  # the score follows the learning rate only: lr must dominate
        lr = 10 ** (-5 + 3 * i / 8)
        study.add_trial(optuna.trial.create_trial(
            params={"optimizer.lr": lr, "technique.r": [8, 16, 32][i % 3]},
            distributions=space, values=[5 + math.log10(lr), 0.01]))
    importance, notes = tables.importances(outputs)
    assert notes == []
    top = importance.sort_values("importance", ascending=False).iloc[0]
    assert (top["study"], top["param"]) == ("s1", "optimizer.lr") and top["importance"] > 0.5
    out = report.write_report(outputs, tmp_path / "enough")
    assert out["importance"].name == "importance.png"
    assert "![Hyperparameter importance" in out["md"].read_text()

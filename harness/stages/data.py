"""Data stage: load, validate, clean, split and format a dataset for training and evaluation.

Sources: the project's demo generator, local JSONL / CSV / Parquet files, or a hub id.
Formats: `instruction` (instruction, input, output), `chat` (messages with roles),
`completion` (text). Bad input fails with one error naming the file and line
(`validate_dataset`, which the trial runs before any model loads).
"""

from __future__ import annotations

import copy
import csv
import functools
import hashlib
import io
import json
import logging
import random
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from harness.config.errors import ConfigError, DataError
from harness.config.files import json_lines, utf8_text

FORMATS = {
    "instruction": ("instruction", "output"),  # `input` is optional
    "chat": ("messages",),
    "completion": ("text",),
}
ROLES = ("system", "user", "assistant")
SOURCES = ("demo", "local", "hub")
# A split the config asks for that ends up smaller than this is still used, with a warning in
# the log and the record: its scores' stderr is large.
MIN_SPLIT_ROWS = 20
log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: list[dict]
    val: list[dict]
    test: list[dict]
    format: str
    counts: dict = field(default_factory=dict)


# ---------------------------------------------------------------- identity

def dataset_fingerprint(dataset_cfg: DictConfig) -> str:
    """Content hash of what the dataset config points at (part of the config hash)."""
    h = hashlib.sha256()
    if dataset_cfg.source == "demo":
        from harness.tasks import demo

        h.update(f"demo-{demo.VERSION}".encode())  # bumped whenever its output changes
    elif dataset_cfg.source == "local":
        path = _existing_path(dataset_cfg.path)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:  # hub: the id and split are all we can know offline
        h.update(f"{dataset_cfg.path}:{dataset_cfg.hub_split}".encode())
    return h.hexdigest()


def _existing_path(path: str | None) -> Path:
    if not path:
        raise ConfigError("dataset.path must name a file for dataset.source=local")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"dataset.path: file not found: {p}")
    return p


# ---------------------------------------------------------------- loading

def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    return [(f"{path}:{lineno}", obj) for lineno, obj in json_lines(path)]


def _read_csv(path: Path) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(utf8_text(path), newline=""))
    try:
        # The reader's line_num is the last line of the record (a quoted cell spans lines).
        return [(f"{path}:{reader.line_num}", dict(row)) for row in reader]
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None


def _read_parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq

    return [(f"{path}:row {i + 1}", row) for i, row in enumerate(pq.read_table(path).to_pylist())]


def _read_local(dataset_cfg: DictConfig) -> list[tuple[str, dict]]:
    path = _existing_path(dataset_cfg.path)
    readers = {".jsonl": _read_jsonl, ".json": _read_jsonl, ".csv": _read_csv,
               ".parquet": _read_parquet}
    if path.suffix not in readers:
        raise DataError(f"dataset.path={str(path)!r}: unsupported type (jsonl, csv, parquet)")
    return readers[path.suffix](path)


def _read_hub(dataset_cfg: DictConfig) -> list[tuple[str, dict]]:
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset_cfg.path, split=dataset_cfg.hub_split)
    except Exception as exc:  # offline, unknown id, ...
        raise DataError(f"dataset.path={dataset_cfg.path!r}: cannot load from the hub ({exc})") from exc
    return [(f"{dataset_cfg.path}[{i}]", dict(row)) for i, row in enumerate(ds)]


def _normalise(where: str, raw: dict, fmt: str, fields: dict) -> dict:
    """Renames columns, checks the format's required fields, returns a clean row."""
    inverse = {src: name for name, src in fields.items()}  # fields: {format name: column}
    row = {inverse.get(k, k): v for k, v in raw.items()}
    missing = [f for f in FORMATS[fmt] if row.get(f) in (None, "")]
    if missing:
        raise DataError(f"{where}: missing field {missing[0]!r} required by dataset.format={fmt}")
    if fmt == "instruction":
        return {"instruction": str(row["instruction"]), "input": str(row.get("input") or ""),
                "output": str(row["output"]), **({"id": str(row["id"])} if "id" in row else {})}
    if fmt == "completion":
        return {"text": str(row["text"])}
    messages = row["messages"]
    if isinstance(messages, str):  # CSV cells hold JSON
        try:
            messages = json.loads(messages)
        except json.JSONDecodeError:
            raise DataError(f"{where}: field 'messages' is not a JSON list") from None
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or "content" not in m:
            raise DataError(f"{where}: each message needs role in {ROLES} and content")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's response")
    return {"messages": [{"role": m["role"], "content": str(m["content"])} for m in messages]}


# ---------------------------------------------------------------- formatting

def prompt_messages(row: dict) -> list[dict]:
    """The chat prompt: everything before the response."""
    if "messages" in row:
        return row["messages"][:-1]
    # The instruction is the system turn: it also stops templates (SmolLM2's) from
    # injecting their own default system prompt.
    user = row["input"] or row["instruction"]
    system = [{"role": "system", "content": row["instruction"]}] if row["input"] else []
    return [*system, {"role": "user", "content": user}]


def response_text(row: dict) -> str:
    if "messages" in row:
        return row["messages"][-1]["content"]
    return row["output"]


def row_text(row: dict) -> str:
    """All text of a row (for dedup and normalisation)."""
    if "text" in row:
        return row["text"]
    return "\n".join(m["content"] for m in prompt_messages(row)) + "\n" + response_text(row)


def to_trl(row: dict, use_chat_template: bool = True) -> dict:
    """TRL SFT example: conversational prompt-completion (loss on the response only) or text."""
    if "text" in row:
        return {"text": row["text"]}
    if use_chat_template:
        return {"prompt": prompt_messages(row),
                "completion": [{"role": "assistant", "content": response_text(row)}]}
    prompt = "\n\n".join(m["content"] for m in prompt_messages(row)) + "\n\n"
    return {"prompt": prompt, "completion": response_text(row)}


def token_length(row: dict, tokenizer) -> int:
    if "text" in row or tokenizer.chat_template is None:
        return len(tokenizer(row_text(row))["input_ids"])
    msgs = prompt_messages(row) + [{"role": "assistant", "content": response_text(row)}]
    return len(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])


# ---------------------------------------------------------------- cleaning

def _shingles(text: str, n: int = 5) -> set[int]:
    words = text.lower().split()
    grams = [" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))]
    return {zlib.crc32(g.encode()) for g in grams}  # crc32: stable across processes


def near_duplicates(texts: list[str], threshold: float, seed: int = 0) -> set[int]:
    """Indices of rows whose word-5-gram Jaccard with an earlier row is >= threshold.

    MinHash (64 permutations) with LSH banding (16 bands x 4 rows) proposes candidate pairs;
    the exact Jaccard decides. Near-linear instead of comparing every pair.
    """
    rng = np.random.default_rng(seed)
    prime = (1 << 61) - 1
    a = rng.integers(1, prime, 64, dtype=np.uint64)
    b = rng.integers(0, prime, 64, dtype=np.uint64)
    sets = [_shingles(t) for t in texts]
    buckets: dict[tuple, list[int]] = {}
    dropped: set[int] = set()
    for i, sh in enumerate(sets):
        x = np.fromiter(sh, dtype=np.uint64)
        sig = ((np.outer(x, a) + b) % np.uint64(prime)).min(axis=0)
        candidates = set()
        for band in range(16):
            key = (band, *sig[band * 4:(band + 1) * 4].tolist())
            candidates.update(buckets.setdefault(key, []))
            buckets[key].append(i)
        for j in sorted(candidates):
            if j in dropped:
                continue
            union = len(sh | sets[j])
            if union and len(sh & sets[j]) / union >= threshold:
                dropped.add(i)
                break
    return dropped


def clean_rows(rows: list[dict], clean_cfg: DictConfig, tokenizer, max_length: int,
               counts: dict) -> list[dict]:
    """NFC normalisation, exact and near dedup, token-length filter; counts what each removed."""
    if clean_cfg.normalize_unicode:
        rows = [_nfc(r) for r in rows]
    if clean_cfg.dedup:
        seen, kept = set(), []
        for r in rows:
            key = hashlib.sha256(row_text(r).encode()).hexdigest()
            if key not in seen:
                seen.add(key)
                kept.append(r)
        counts["dedup_removed"] = len(rows) - len(kept)
        rows = kept
    if clean_cfg.near_dedup:
        drop = near_duplicates([row_text(r) for r in rows], clean_cfg.near_dedup_threshold)
        counts["near_dedup_removed"] = len(drop)
        rows = [r for i, r in enumerate(rows) if i not in drop]
    max_tokens = clean_cfg.max_tokens or max_length
    lengths = [token_length(r, tokenizer) for r in rows]
    kept = [r for r, n in zip(rows, lengths, strict=True) if clean_cfg.min_tokens <= n <= max_tokens]
    counts["length_removed"] = len(rows) - len(kept)
    return kept


def _nfc(row: dict) -> dict:
    def norm(v):
        if isinstance(v, str):
            return unicodedata.normalize("NFC", v)
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        return v

    return norm(row)


# ---------------------------------------------------------------- splits

def _size(spec: float, n: int, name: str) -> int:
    return int(round(spec * n)) if spec < 1 else int(spec)


def _split(rows: list[dict], dataset_cfg: DictConfig) -> tuple[list, list, list]:
    """Deterministic by dataset.split_seed: the same rows always land in the same split."""
    order = list(range(len(rows)))
    random.Random(dataset_cfg.split_seed).shuffle(order)
    n_test = _size(dataset_cfg.test_size, len(rows), "test_size")
    n_val = _size(dataset_cfg.val_size, len(rows), "val_size")
    test = [rows[i] for i in order[:n_test]]
    val = [rows[i] for i in order[n_test:n_test + n_val]]
    train = [rows[i] for i in order[n_test + n_val:]]
    return train, val, test


def validate_dataset(dataset_cfg: DictConfig) -> None:
    """Checks every setting, and reads and checks every row of a local file (each error
    names the setting or file:line), without a tokenizer: before any model loads."""
    _check_settings(dataset_cfg)
    if dataset_cfg.source != "hub":  # a hub dataset is read when it loads (needs the network)
        _read_rows_cached(*_cache_key(dataset_cfg))


def _check_settings(dataset_cfg: DictConfig) -> None:
    if dataset_cfg.source not in SOURCES:
        raise ConfigError(f"dataset.source={dataset_cfg.source!r}: choose one of {', '.join(SOURCES)}")
    if dataset_cfg.format not in FORMATS:
        raise ConfigError(f"dataset.format={dataset_cfg.format!r}: choose one of {', '.join(FORMATS)}")
    for key in ("val_size", "test_size"):
        if dataset_cfg[key] < 0:
            raise ConfigError(f"dataset.{key}={dataset_cfg[key]}: must be >= 0 (a fraction < 1 "
                              "or a row count)")
    if dataset_cfg.max_rows is not None and dataset_cfg.max_rows < 1:
        raise ConfigError(f"dataset.max_rows={dataset_cfg.max_rows}: must be >= 1 (or null)")
    clean = dataset_cfg.clean
    if not 0 < clean.near_dedup_threshold <= 1:
        raise ConfigError(f"dataset.clean.near_dedup_threshold={clean.near_dedup_threshold}: "
                          "must be in (0, 1]")
    if clean.max_tokens is not None and clean.max_tokens < clean.min_tokens:
        raise ConfigError(f"dataset.clean.max_tokens={clean.max_tokens} is below "
                          f"dataset.clean.min_tokens={clean.min_tokens}")
    if dataset_cfg.source == "demo" and dataset_cfg.format != "instruction":
        raise ConfigError(f"dataset.format={dataset_cfg.format}: the demo task is in the "
                          "instruction format")


@functools.lru_cache(maxsize=4)
def _read_rows_cached(key: str, dataset_json: str) -> list[dict] | dict[str, list[dict]]:
    dataset_cfg = OmegaConf.create(json.loads(dataset_json))
    if dataset_cfg.source == "demo":
        from harness.tasks import demo

        try:
            return demo.generate(**OmegaConf.to_container(dataset_cfg.demo))
        except TypeError as exc:  # an unknown key under dataset.demo
            raise ConfigError(f"dataset.demo: {exc}") from None
    raw = _read_local(dataset_cfg) if dataset_cfg.source == "local" else _read_hub(dataset_cfg)
    fields = OmegaConf.to_container(dataset_cfg.fields)
    return [_normalise(where, r, dataset_cfg.format, fields) for where, r in raw]


def _cache_key(dataset_cfg: DictConfig) -> tuple[str, str]:
    """The content fingerprint and the settings: a changed file is read again."""
    return (dataset_fingerprint(dataset_cfg),
            json.dumps(OmegaConf.to_container(dataset_cfg, resolve=True), sort_keys=True))


def read_rows(dataset_cfg: DictConfig) -> list[dict] | dict[str, list[dict]]:
    """The rows of a checked dataset config, in its format, checked line by line (a pre-split
    source, the demo task, gives {train, val, test}). Read once per process and content:
    validation and loading share it; each caller gets its own copy."""
    _check_settings(dataset_cfg)
    return copy.deepcopy(_read_rows_cached(*_cache_key(dataset_cfg)))


def load_splits(dataset_cfg: DictConfig, tokenizer, max_length: int) -> Splits:
    """Loads, validates, cleans and splits the dataset; counts are kept for the record.

    A split the config asks for (val_size or test_size > 0) that cleaning leaves empty is a
    DataError; one smaller than MIN_SPLIT_ROWS is used with a warning (log and record)."""
    raw = read_rows(dataset_cfg)
    counts: dict = {}
    where = dataset_cfg.path or dataset_cfg.name
    if isinstance(raw, dict):  # pre-split source: clean each split on its own
        splits = {}
        for name, rows in raw.items():
            rows = rows[: dataset_cfg.max_rows] if dataset_cfg.max_rows else rows
            c: dict = {"loaded": len(rows)}
            splits[name] = clean_rows(rows, dataset_cfg.clean, tokenizer, max_length, c)
            counts[name] = c
        train, val, test = splits["train"], splits["val"], splits["test"]
        asked = {"val": len(raw["val"]) > 0, "test": len(raw["test"]) > 0}
    else:
        rows = raw[: dataset_cfg.max_rows] if dataset_cfg.max_rows else raw
        counts["loaded"] = len(rows)
        rows = clean_rows(rows, dataset_cfg.clean, tokenizer, max_length, counts)
        if not rows:
            raise DataError(f"dataset {where}: no rows left after cleaning ({counts})")
        train, val, test = _split(rows, dataset_cfg)
        asked = {"val": dataset_cfg.val_size > 0, "test": dataset_cfg.test_size > 0}
    if not train:
        raise DataError(f"dataset {where}: empty training split after cleaning ({counts})")
    sizes = {"train": len(train), "val": len(val), "test": len(test)}
    for name, wanted in asked.items():
        setting = f"dataset.{name}_size"
        if wanted and not sizes[name]:
            raise DataError(
                f"dataset {where}: {sizes['train'] + sizes['val'] + sizes['test']} rows are left "
                f"after cleaning ({_removed(counts)}), which gives no {name} rows at {setting}="
                f"{dataset_cfg[f'{name}_size']}: add rows, or give {setting} as a row count")
        if wanted and sizes[name] < MIN_SPLIT_ROWS:
            warning = (f"the {name} split has {sizes[name]} rows (fewer than {MIN_SPLIT_ROWS}): "
                       "its scores have a large stderr")
            log.warning("dataset %s: %s", where, warning)
            counts.setdefault("warnings", []).append(warning)
    counts["rows"] = sizes
    return Splits(train, val, test, dataset_cfg.format, counts)


def _removed(counts: dict) -> str:
    parts = [f"{k.removesuffix('_removed')} removed {v}" for k, v in counts.items()
             if k.endswith("_removed") and v]
    return ", ".join([f"loaded {counts.get('loaded')}", *parts])

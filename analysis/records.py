"""Run records -> one pandas DataFrame, one row per run.

    from analysis.records import load_runs
    runs = load_runs("outputs")          # every **/record.json under the folder

Columns: identity (`config_hash`, `folder`, `reproduce`, `command`, `sweep`, `created_at`),
`status` and `reason`, the `technique` label ("lora r16"), the flattened config
(`config.optimizer.lr`, ...), and every metric under its record name (`eval/task/acc`,
`cost/usd`, ...), plus `base/<metric>` for the base model's scores. The contract is
docs/internals.md. A record that cannot be read, or that breaks the contract, becomes a
row with status `invalid` or `incomplete` and the reason, never an exception: a report
over hundreds of runs must not die on one half-written file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.trial.record import deltas

FORMAT_VERSION = 1  # the record format this reader understands (harness/record.py)
STATUSES = ("running", "complete", "failed", "pruned")
REQUIRED = ("config_hash", "status", "created_at", "config", "metrics")
ADAPTERS = ("lora", "qlora", "dora")  # techniques whose rank is part of the label
ACC = "eval/task/acc"  # the held-out task accuracy: the objective every report ranks by
USD = "cost/usd"


def find_record_files(root: str | Path) -> list[Path]:
    """Every record under `root` (an outputs dir, a sweep dir or a single run folder)."""
    return sorted(Path(root).glob("**/record.json"))


def technique_label(technique: Any) -> str | None:
    """"full", or "lora r16" for adapters: rank changes cost and capacity enough to be a
    technique of its own in the tables."""
    if not isinstance(technique, dict) or not technique.get("name"):
        return None
    name = str(technique["name"])
    rank = technique.get("r")
    if name in ADAPTERS and rank is not None:
        return f"{name} r{rank}"
    return name


def _flatten(obj: dict, prefix: str) -> dict[str, Any]:
    """Nested config -> `prefix.a.b` scalar columns; lists become JSON text so every
    column stays a scalar that CSV and Parquet can hold."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def as_number(value: Any) -> float:
    """Metric value as float; anything that is not a number (null, text) is NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _problem(data: dict) -> tuple[str | None, str | None]:
    """(status, reason) when the record breaks the contract, else (None, None)."""
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        return "invalid", f"format_version {version!r}, this report reads {FORMAT_VERSION}"
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        return "incomplete", f"missing keys: {', '.join(missing)}"
    if not isinstance(data["config"], dict) or not isinstance(data["metrics"], dict):
        return "incomplete", "config or metrics is not an object"
    if data["status"] not in STATUSES:
        return "incomplete", f"unknown status {data['status']!r}"
    if technique_label(data["config"].get("technique")) is None:
        return "incomplete", "config.technique.name missing"
    return None, None


def _metrics(data: dict) -> dict[str, float]:
    metrics = {k: as_number(v) for k, v in (data.get("metrics") or {}).items()}
    base = data.get("base_metrics") if isinstance(data.get("base_metrics"), dict) else {}
    base = {key: as_number(value) for key, value in base.items()}
    metrics.update({f"base/{key}": value for key, value in base.items()})
    for key, value in deltas(metrics, base).items():  # older runs may have no deltas
        metrics.setdefault(key, value)
    total = metrics.get("params/total")
    if "params/trainable_share" not in metrics and total:
        metrics["params/trainable_share"] = metrics.get("params/trainable", math.nan) / total
    return metrics


def record_row(path: Path) -> dict[str, Any]:
    """One run's row; unreadable or contract-breaking records keep a row with the reason."""
    row: dict[str, Any] = {"folder": str(path.parent), "record_path": str(path)}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return {**row, "status": "invalid", "reason": f"unreadable record: {exc}"}
    if not isinstance(data, dict):
        return {**row, "status": "invalid", "reason": "record is not a JSON object"}
    problem, reason = _problem(data)
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    technique = config.get("technique") if isinstance(config.get("technique"), dict) else {}
    chash = data.get("config_hash")
    sweep = data.get("sweep") if isinstance(data.get("sweep"), dict) else {}
    row.update({
        "config_hash": chash,
        "status": problem or data.get("status"),
        "reason": reason or data.get("error"),
        "technique": technique_label(technique),
        "technique_name": technique.get("name") or None,
        "sweep": sweep.get("study_name"),
        "trial_number": sweep.get("trial_number"),
        "created_at": data.get("created_at"),
        "updated_at": data.get("updated_at"),
        "pruned_at_step": data.get("pruned_at_step"),
        "command": data.get("command"),
        "reproduce": f"harness-reproduce {chash}" if chash else None,
    })
    row.update(_flatten(config, "config"))
    row.update(_metrics(data))
    return row


def _dedupe(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per config hash (the same experiment copied into two output dirs): the
    complete one, else the latest. Rows without a hash (unreadable) are all kept."""
    has_hash = runs["config_hash"].notna()
    ranked = runs[has_hash]
    ranked = ranked.assign(_done=ranked["status"].eq("complete"))
    ranked = ranked.sort_values(["_done", "updated_at"], na_position="first")
    kept = ranked.drop_duplicates("config_hash", keep="last").drop(columns="_done")
    return pd.concat([kept, runs[~has_hash]]).sort_index()


def _filter(runs: pd.DataFrame, sweep: str | None, technique: str | None,
            since: str | None) -> pd.DataFrame:
    if sweep:
        runs = runs[runs["sweep"] == sweep]
    if technique:
        runs = runs[(runs["technique_name"] == technique) | (runs["technique"] == technique)]
    if since:
        start = pd.Timestamp(since)
        start = start.tz_localize("UTC") if start.tzinfo is None else start
        runs = runs[runs["created_at"] >= start]
    return runs


def load_runs(root: str | Path, sweep: str | None = None, technique: str | None = None,
              since: str | None = None) -> pd.DataFrame:
    """All records under `root` as one DataFrame, optionally filtered.

    Args:
        root: an outputs dir, a sweep dir or a run folder; searched recursively.
        sweep: keep runs whose record names this study (`sweep.study_name`).
        technique: keep runs of this technique name ("lora") or label ("lora r16").
        since: keep runs created on or after this date (ISO-8601; UTC when no zone).
    """
    rows = [record_row(p) for p in find_record_files(root)]
    columns = ["config_hash", "status", "reason", "technique", "technique_name", "sweep",
               "trial_number", "created_at", "updated_at", "folder", "command", "reproduce"]
    runs = pd.DataFrame(rows).reindex(columns=list(dict.fromkeys(columns + _all_keys(rows))))
    runs["created_at"] = pd.to_datetime(runs["created_at"], utc=True, errors="coerce",
                                        format="ISO8601")
    runs["updated_at"] = pd.to_datetime(runs["updated_at"], utc=True, errors="coerce",
                                        format="ISO8601")
    runs = _filter(_dedupe(runs), sweep, technique, since)
    return runs.reset_index(drop=True)


def _all_keys(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def load_history(runs: pd.DataFrame) -> pd.DataFrame:
    """The loss history of every complete run (the record's `history`), long format:
    technique, config_hash, step, metric (`train/loss`, `eval/loss`), value."""
    rows = []
    done = runs[runs["status"] == "complete"] if len(runs) else runs
    for _, run in done.iterrows():
        try:
            history = json.loads(Path(run["record_path"]).read_text()).get("history") or []
        except (OSError, ValueError, KeyError, TypeError):
            continue
        for entry in history:
            if not isinstance(entry, dict) or "step" not in entry:
                continue
            for metric in ("train/loss", "eval/loss"):
                value = as_number(entry.get(metric))
                if not math.isnan(value):
                    rows.append({"technique": run["technique"],
                                 "config_hash": run["config_hash"], "step": entry["step"],
                                 "metric": metric, "value": value})
    return pd.DataFrame(rows, columns=["technique", "config_hash", "step", "metric", "value"])


def load_studies(root: str | Path, sweep: str | None = None) -> pd.DataFrame:
    """Trials from every `study.csv` (written by the sweeper) under `root`.

    Columns: study, number, state, config_hash, value (the first objective). The study is
    the csv's `study_name` column when it has one, else the name of its folder.
    """
    frames = []
    for path in sorted(Path(root).glob("**/study.csv")):
        try:
            trials = pd.read_csv(path)
        except (OSError, ValueError):
            continue  # a half-written study file: the records still give best-so-far
        if "number" not in trials or "state" not in trials:
            continue
        values = [c for c in trials.columns if c == "value" or c.startswith("values")]
        frames.append(pd.DataFrame({
            "study": trials.get("study_name", path.parent.name),
            "number": trials["number"],
            "state": trials["state"].astype(str),
            "config_hash": trials.get("config_hash"),
            "value": trials[values[0]] if values else math.nan,
        }))
    studies = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["study", "number", "state", "config_hash", "value"])
    return studies[studies["study"] == sweep] if sweep else studies

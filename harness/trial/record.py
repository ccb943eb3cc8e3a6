"""Run identity and records: the config hash, the run folder, atomic `record.json` writes.

The hash is the identity of an experiment: sha256 over canonical JSON of the resolved
config minus what cannot change the result (paths, logger, sweeper trial info, the hydra
node), plus a fingerprint of the dataset's content. Same hash, same experiment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config.files import atomic_write_text

FORMAT_VERSION = 1
# Top-level nodes that never change what a run computes: left out of the hash, and overrides
# of them are left out of a run's command (`changes_run`).
UNHASHED = ("paths", "logger", "trial", "hydra", "task_name", "offline", "distributed")
TRACKED_PACKAGES = (
    "torch", "transformers", "peft", "trl", "bitsandbytes", "lm_eval", "datasets",
    "accelerate", "optuna", "hydra-core", "numpy",
)


def _canonical(obj: Any) -> Any:
    """Makes floats spelling-independent (1e-4 == 0.0001) and rejects NaN/inf."""
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"config value {obj!r} is not finite; it cannot be hashed")
        return repr(obj)
    return obj


def hashed_config(cfg: DictConfig) -> dict:
    """The part of the resolved config that defines the experiment.

    Only the hashed nodes are resolved: `paths` interpolates `${hydra:...}` values that do not
    exist yet where the sweeper hashes a trial before launching it.
    """
    hashed = {}
    for key in cfg:
        if key in UNHASHED:
            continue
        value = cfg[key]
        hashed[key] = (OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
                       if OmegaConf.is_config(value) else value)
    return hashed


def config_hash(cfg: DictConfig) -> str:
    """sha256 of canonical JSON of the hashed config plus the dataset content fingerprint."""
    from harness.stages.data import dataset_fingerprint

    payload = {
        "config": _canonical(hashed_config(cfg)),
        "dataset_fingerprint": dataset_fingerprint(cfg.dataset),
        "format_version": FORMAT_VERSION,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def changes_run(override: str) -> bool:
    """Whether a command-line override (`technique=lora`, `+trial.number=3`,
    `hydra.sweep.dir=...`) can change what the run computes, by UNHASHED."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key.split(".", 1)[0].split("/", 1)[0] not in UNHASHED


def run_command(overrides: list[str]) -> str:
    """The `harness-train` command that runs the same experiment."""
    return shlex.join(["harness-train", *(o for o in overrides if changes_run(o))])


def deltas(metrics: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """`<metric>_delta` = trained - base, for every eval score the base model also has."""
    return {f"{k}_delta": v - base[k] for k, v in metrics.items()
            if k.startswith("eval/") and k in base and not k.endswith(("_stderr", "_delta"))
            and v is not None and base[k] is not None}


def runs_dir(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "runs"


def run_dir(output_dir: str | os.PathLike, chash: str) -> Path:
    return runs_dir(output_dir) / chash


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    return str(obj)


def _clean_floats(obj: Any) -> Any:
    """JSON has no NaN: store non-finite numbers as null."""
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean_floats(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def load_record(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def find_records(output_dir: str | os.PathLike) -> list[Path]:
    return sorted(runs_dir(output_dir).glob("*/record.json"))


def find_by_prefix(output_dir: str | os.PathLike, prefix: str) -> Path:
    """The run folder whose hash starts with `prefix`; errors name the ambiguity."""
    matches = [p for p in runs_dir(output_dir).glob(f"{prefix}*") if (p / "record.json").exists()]
    if not matches:
        raise FileNotFoundError(f"no run with hash prefix {prefix!r} under {runs_dir(output_dir)}")
    if len(matches) > 1:
        names = ", ".join(p.name[:12] for p in matches)
        raise ValueError(f"hash prefix {prefix!r} is ambiguous: {names}")
    return matches[0]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name.replace("_", "-"))
        except PackageNotFoundError:
            continue
    return found


def pid_alive(pid: int | None, host: str | None) -> bool:
    """Whether the process that wrote a `running` record may still be running."""
    if pid is None:
        return False
    if host != socket.gethostname():
        return True  # another machine's process: cannot check, assume alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Record:
    """The record of one run, rewritten atomically at every status change."""

    def __init__(self, folder: Path, data: dict):
        self.folder = folder
        self.path = folder / "record.json"
        self.data = data

    @classmethod
    def start(cls, folder: Path, cfg: DictConfig, chash: str, command: str, overrides: list[str]):
        container = OmegaConf.to_container(cfg, resolve=True)
        data = {
            "format_version": FORMAT_VERSION,
            "config_hash": chash,
            "status": "running",
            "error": None,
            "pruned_at_step": None,
            "created_at": now_iso(),
            "updated_at": now_iso(),
            "command": command,
            "overrides": list(overrides),
            "config": container,
            "metrics": {},
            "history": [],
            "data": {},
            "base_metrics": {},
            "env": {
                "versions": package_versions(),
                "git_commit": git_commit(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            },
        }
        trial = container.get("trial") or {}
        if trial.get("study_name") is not None:
            data["sweep"] = {"study_name": trial["study_name"], "trial_number": trial.get("number")}
        record = cls(folder, data)
        atomic_write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        record.save()
        return record

    def update(self, **fields: Any) -> None:
        for key, value in fields.items():
            if key in ("metrics", "data", "env", "base_metrics") and isinstance(value, dict):
                self.data.setdefault(key, {}).update(value)
            else:
                self.data[key] = value
        self.save()

    def save(self) -> None:
        self.data["updated_at"] = now_iso()
        text = json.dumps(_clean_floats(self.data), indent=2, sort_keys=False, default=_json_default)
        atomic_write_text(self.path, text + "\n")

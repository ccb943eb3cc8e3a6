"""Shared helpers: compose the real conf/, describe the machine, rewrite one BENCHMARKS.md
section in place (between `<!-- name:start -->` and `<!-- name:end -->`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.config.schema import register_configs

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def machine() -> str:
    """One line: device, CPU, cores, key package versions, date."""
    import torch

    from harness.trial.record import package_versions

    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        device = "CPU only"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    versions = package_versions()
    keys = ("torch", "transformers", "peft", "trl", "bitsandbytes", "lm_eval", "optuna")
    pkgs = ", ".join(f"{k} {versions[k]}" for k in keys if k in versions)
    today = dt.date.today().isoformat()
    return f"{device}; {cpu}, {os.cpu_count()} cores; Python {platform.python_version()}; {pkgs}; {today}"


def run_json(module: str, args: list[str], timeout: int = 3600,
             env: dict[str, str] | None = None) -> dict:
    """Runs `python -m module args` in a fresh process (fresh peak-memory counters), with
    `env` added to the environment, and parses the last stdout line as JSON."""
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_section(name: str, body: str) -> None:
    """Replaces (or appends) the section `name` of BENCHMARKS.md."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    BENCHMARKS_MD.write_text(text)
    print(f"wrote section {name!r} of {BENCHMARKS_MD}")


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


WARMUP_STEPS = 2  # left out of steady-state throughput: allocations, torch.compile's compiles


def _step_points(history: list[dict]) -> list[dict]:
    """The training steps of a HistoryCallback history (tokens and seconds so far)."""
    return [h for h in history if "tokens" in h and "train/loss" in h]


def warmup_seconds(history: list[dict], skip: int = WARMUP_STEPS) -> float:
    """Seconds until the end of step `skip`: what steady_tokens_per_s leaves out."""
    points = _step_points(history)
    return points[skip]["time_s"] if len(points) > skip else float("nan")


def steady_tokens_per_s(history: list[dict], skip: int = WARMUP_STEPS) -> float:
    """Non-pad tokens/s between step `skip` and the last step (first steps warm up)."""
    points = _step_points(history)
    if len(points) <= skip:
        points = [{"tokens": 0, "time_s": 0.0}, *points]
        skip = 0
    first, last = points[skip], points[-1]
    seconds = last["time_s"] - first["time_s"]
    return (last["tokens"] - first["tokens"]) / seconds if seconds > 0 else float("nan")

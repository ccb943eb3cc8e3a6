"""Config layout: each default lives in one place, and the CLI's help answers at once with the
project's own groups."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from harness.config import schema

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCHEMAS = {"model": schema.ModelConfig, "dataset": schema.DatasetConfig,
           "optimizer": schema.OptimizerConfig, "train": schema.TrainConfig,
           "eval": schema.EvalConfig, "cost": schema.CostConfig, "logger": schema.LoggerConfig,
           "paths": schema.PathsConfig, "trial": schema.TrialConfig,
           "distributed": schema.DistributedConfig}
TECHNIQUES = {"full": schema.FullConfig, "lora": schema.LoraConfig, "dora": schema.LoraConfig,
              "qlora": schema.QLoraConfig}


def leaves(node: dict, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def options():
    for path in sorted((ROOT / "conf").glob("*/*.yaml")):
        group = path.parent.name
        node = TECHNIQUES[path.stem] if group == "technique" else SCHEMAS[group]
        yield pytest.param(path, node, id=f"{group}/{path.stem}")


@pytest.mark.parametrize(("path", "node"), options())
def test_no_option_repeats_its_schema_default(path, node):
    defaults = dict(leaves(OmegaConf.to_container(OmegaConf.structured(node))))
    values = yaml.safe_load(path.read_text()) or {}
    values.pop("defaults", None)
    repeated = [key for key, value in leaves(values) if key in defaults and defaults[key] == value]
    assert repeated == [], f"{path.name} repeats the schema default of {repeated}"


def help_text(command: str, cwd: Path) -> str:
    out = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True,
                         cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("command", ["harness-train", "harness-sweep"])
def test_help_lists_exactly_the_project_groups_from_anywhere(command, tmp_path):
    (tmp_path / "outputs" / "x" / ".hydra").mkdir(parents=True)  # what a user's folder holds
    text = help_text(command, tmp_path)
    listed = text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = {line.split(":")[0] for line in listed.splitlines() if ": " in line}
    expected = {p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra"}
    assert groups == expected | {"sweeps"}
    assert "technique: dora, full, lora, qlora" in listed  # options only, no schemas
    sweeps = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))
    assert f"sweeps: {', '.join(sweeps)}" in listed
    if command == "harness-sweep":
        assert all(f"  {name}" in text.split("== Configuration groups ==")[0] for name in sweeps)

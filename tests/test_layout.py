"""The package layout is the architecture: layers import only downwards, nothing imports in a
cycle, and analysis/ reads records without the pipeline.

    config -> tasks -> stages -> trial -> sweep -> cli / the Hydra plugin

Every import counts: those inside functions (they run as surely, only later) and those under
`if TYPE_CHECKING:` (a dependency all the same).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"config": 0, "tasks": 1, "stages": 2, "trial": 3, "sweep": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def graph(package: str) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    names = {module_name(f) for f in files}
    return {module_name(f): {m for m in imports(f) if m in names} - {module_name(f)}
            for f in files}


HARNESS = {**graph("harness"), **graph("hydra_plugins")}


def layer(module: str) -> int | None:
    if module.startswith("hydra_plugins"):
        return LAYERS["cli"]
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_layers_import_only_downwards():
    upward = [(m, dep) for m, deps in HARNESS.items() for dep in deps
              if layer(m) is not None and layer(dep) is not None and layer(dep) > layer(m)]
    assert upward == []


def test_every_module_sits_in_a_layer():
    loose = [m for m in HARNESS if layer(m) is None and m != "harness"]
    assert loose == []


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(HARNESS.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(HARNESS):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_a_trial_knows_nothing_of_sweeps_and_stages_nothing_of_trials():
    for module, deps in HARNESS.items():
        if layer(module) in (LAYERS["stages"], LAYERS["trial"]):
            assert not [d for d in deps if d.startswith("harness.sweep")], module


@pytest.mark.parametrize("path", sorted((ROOT / "analysis").glob("*.py")), ids=lambda p: p.name)
def test_analysis_reads_records_only(path):
    harness = {m for m in imports(path) if m.startswith("harness")}
    assert all(m.startswith(("harness.trial.record", "harness.config")) for m in harness), harness

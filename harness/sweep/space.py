"""Search spaces of the harness sweeper: parse, validate, sample, and turn into overrides.

A space is an ordered list of `Param`s read from `hydra.sweeper.params` of a sweep file, plus
the sweep overrides of the command line (`technique=lora,dora`,
`optimizer.lr='tag(log, interval(1e-5, 1e-3))'`). Forms a parameter can take:

    params:
      technique: [full, lora, qlora, dora]           # list: categorical
      optimizer.lr: tag(log, interval(1e-5, 1e-3))  # Hydra's sweep syntax
      technique.r:                                   # mapping: every option
        type: int                                    # categorical | int | float
        low: 4
        high: 64
        log: true                                    # or step: 4 (not both)
        when: {technique: [lora, qlora, dora]}       # only for these values of a parameter above
      train.max_steps: 50                            # a plain value: fixed for every trial

A parameter whose `when` does not hold is not sampled and not overridden, so a `full` trial
never carries a rank and two `full` trials that differ only in an unused rank hash the same.
A non-sweep command-line override of a parameter (`technique=lora`) fixes it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config.errors import ConfigError
from harness.trial.record import changes_run

KINDS = ("categorical", "int", "float", "fixed")
SPEC_KEYS = {"type", "choices", "low", "high", "log", "step", "when"}
_SAFE = re.compile(r"[A-Za-z_/][\w./:@-]*")
_RESERVED = {"true", "false", "null", "none", "nan", "inf", "+inf", "-inf"}


@dataclass(frozen=True)
class Param:
    name: str  # the override key as written, e.g. technique.r or +foo.bar
    kind: str  # categorical | int | float | fixed
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    value: Any = None  # kind == fixed
    when: Mapping[str, tuple] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.name.lstrip("+~")


def _where(name: str) -> str:
    return f"hydra.sweeper.params.{name}"


def _primitive(value: Any) -> Any:
    """Optuna stores str/int/float/bool/None choices; a list or mapping goes as override text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return format_value(value)


def param_from_spec(name: str, spec: Any, parse_override: Callable[[str], Any]) -> Param:
    """One parameter from its sweep-file form (list, sweep-syntax string, mapping or value)."""
    if OmegaConf.is_config(spec):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, (list, tuple)):
        return _checked(Param(name, "categorical", choices=tuple(_primitive(c) for c in spec)))
    if isinstance(spec, str):
        return param_from_override(parse_override(f"{name}={spec}"))
    if not isinstance(spec, dict):
        return Param(name, "fixed", value=spec)
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{_where(name)}: unknown option(s) {unknown}; "
                          f"use {sorted(SPEC_KEYS)}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in ("categorical", "int", "float"):
        raise ConfigError(f"{_where(name)}.type={kind!r}: choose categorical, int or float")
    return _checked(Param(
        name, kind, choices=tuple(_primitive(c) for c in spec.get("choices") or ()),
        low=spec.get("low"), high=spec.get("high"), log=bool(spec.get("log", False)),
        step=spec.get("step"), when=_when(name, spec.get("when")),
    ))


def _when(name: str, when: Any) -> dict[str, tuple]:
    if when is None:
        return {}
    if not isinstance(when, dict):
        raise ConfigError(f"{_where(name)}.when: expected a mapping {{parameter: value(s)}}")
    return {k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in when.items()}


def _checked(p: Param) -> Param:
    """Values are checked here, where they are read: the error names the parameter."""
    where = _where(p.name)
    if p.kind == "categorical" and not p.choices:
        raise ConfigError(f"{where}: a categorical parameter needs at least one choice")
    if p.kind in ("int", "float"):
        if not all(isinstance(v, (int, float)) for v in (p.low, p.high)):
            raise ConfigError(f"{where}: {p.kind} needs numeric low and high")
        if not p.low <= p.high:
            raise ConfigError(f"{where}: low={p.low} is above high={p.high}")
        if p.log and (p.step is not None or p.low <= 0):
            raise ConfigError(f"{where}: log scale needs low > 0 and no step")
    return p


def param_from_override(override: Any) -> Param:
    """A parameter from a parsed Hydra override (`choice`, `range`, `interval`, `a,b,c`)."""
    from hydra.core.override_parser.types import Transformer

    name = override.get_key_element()
    if not override.is_sweep_override():
        return Param(name, "fixed", value=override.value())
    sweep = override.value()
    if override.is_interval_sweep():
        kind = "int" if "int" in sweep.tags else "float"
        low, high = (int(sweep.start), int(sweep.end)) if kind == "int" else (sweep.start, sweep.end)
        return _checked(Param(name, kind, low=low, high=high, log="log" in sweep.tags))
    values = list(override.sweep_iterator(transformer=Transformer.encode))
    if override.is_range_sweep() and not sweep.shuffle and all(isinstance(v, int) for v in values):
        return _checked(Param(name, "int", low=values[0], high=values[-1], step=sweep.step))
    if override.is_range_sweep():  # float steps: enumerate, without 0.30000000000000004
        values = [float(f"{v:.12g}") if isinstance(v, float) else v for v in values]
    return _checked(Param(name, "categorical", choices=tuple(_primitive(v) for v in values)))


def build_space(params: Mapping[str, Any], arguments: Iterable[str],
                parse_overrides: Callable[[list[str]], list]) -> tuple[list[Param], list[str]]:
    """(space, passthrough): the sweep file's parameters with the command line merged in.

    Sweep overrides on the command line add or replace parameters; a plain override of a
    parameter fixes it; every other override passes through to each trial unchanged.
    """

    def parse_one(line: str):
        return parse_overrides([line])[0]

    space: dict[str, Param] = {}
    for name, spec in params.items():
        p = param_from_spec(str(name), spec, parse_one)
        space[p.key] = p
    passthrough = []
    for override in parse_overrides(list(arguments)):
        key = override.key_or_group
        if override.is_sweep_override() or key in space:
            old = space.get(key)
            new = param_from_override(override)
            space[key] = Param(new.name, new.kind, new.choices, new.low, new.high, new.log,
                               new.step, new.value, old.when if old else {})
        else:
            passthrough.append(override.input_line)
    return list(space.values()), passthrough


def _flat_keys(node: Any, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(node, dict):
        for k, v in node.items():
            full = f"{prefix}{k}"
            keys.add(full)
            keys |= _flat_keys(v, f"{full}.")
    return keys


def validate_space(space: list[Param], cfg: DictConfig,
                   group_options: Callable[[str], list[str]]) -> None:
    """Fails before any training on a parameter that names no config key or group option."""
    choices = cfg.hydra.runtime.choices if "hydra" in cfg else {}
    task = OmegaConf.to_container(cfg, resolve=False)
    task.pop("hydra", None)
    keys = _flat_keys(task)
    seen: list[str] = []
    for p in space:
        for cond in p.when:
            if cond not in seen:
                raise ConfigError(f"{_where(p.name)}.when: {cond!r} is not a parameter listed "
                                  f"before {p.key!r} (known: {', '.join(seen) or 'none'})")
        seen.append(p.key)
        if p.name.startswith("+"):
            continue  # adds a key on purpose
        if p.key in choices:
            _check_group(p, group_options(p.key))
        elif p.key not in keys:
            near = difflib.get_close_matches(p.key, sorted(keys), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ConfigError(f"{_where(p.name)}: unknown parameter {p.key!r}: no such key or "
                              f"config group in the composed config{hint}")


def _check_group(p: Param, options: list[str]) -> None:
    options = [o for o in options if not o.endswith("_schema")]
    wanted = p.choices if p.kind == "categorical" else (p.value,)
    bad = [str(v) for v in wanted if str(v) not in options]
    if p.kind in ("int", "float") or bad:
        raise ConfigError(f"{_where(p.name)}: config group {p.key!r} has no option(s) "
                          f"{bad or p.kind}; options: {', '.join(options)}")


def active(p: Param, values: Mapping[str, Any]) -> bool:
    return all(values.get(k, object()) in allowed for k, allowed in p.when.items())


def sample(trial: Any, space: list[Param]) -> dict[str, Any]:
    """Parameter values for one trial: only the parameters whose conditions hold, in order."""
    values: dict[str, Any] = {}
    for p in space:
        if not active(p, values):
            continue
        if p.kind == "fixed":
            values[p.key] = p.value
        elif p.kind == "categorical":
            values[p.key] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(p.name, int(p.low), int(p.high),
                                              step=int(p.step or 1), log=p.log)
        else:
            values[p.key] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return values


def to_overrides(space: list[Param], values: Mapping[str, Any]) -> list[str]:
    verbatim = {p.key for p in space if p.kind == "categorical"
                and any(isinstance(c, str) and c[:1] in "[{" for c in p.choices)}
    names = {p.key: p.name for p in space}
    return [f"{names[k]}={v if k in verbatim else format_value(v)}" for k, v in values.items()]


def format_value(value: Any) -> str:
    """A value as Hydra override text that parses back to the same value and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _SAFE.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return "'" + text.replace("'", "\\'") + "'"


def grid(space: list[Param]) -> dict[str, list]:
    """GridSampler's search space: every sampled parameter must have a finite set of values."""
    out = {}
    for p in space:
        if p.kind == "categorical":
            out[p.name] = list(p.choices)
        elif p.kind == "int" and not p.log:
            out[p.name] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        elif p.kind == "float" and p.step and not p.log:
            n = int(round((p.high - p.low) / p.step))
            out[p.name] = [float(f"{p.low + i * p.step:.12g}") for i in range(n + 1)]
        elif p.kind != "fixed":
            raise ConfigError(f"{_where(p.name)}: the grid sampler needs choices or a step "
                              f"(no log scale) for every parameter")
    return out


def describe(space: list[Param]) -> list[str]:
    """One line per parameter, for logs and for naming ad-hoc studies."""
    lines = []
    for p in space:
        if p.kind == "fixed":
            body = f"= {format_value(p.value)}"
        elif p.kind == "categorical":
            body = "in {" + ", ".join(format_value(c) for c in p.choices) + "}"
        else:
            scale = " log" if p.log else (f" step {p.step}" if p.step else "")
            body = f"{p.kind} [{p.low}, {p.high}]{scale}"
        cond = "".join(f" if {k} in {list(v)}" for k, v in p.when.items())
        lines.append(f"{p.name} {body}{cond}")
    return lines


def adhoc_name(space: list[str], passthrough: list[str], objectives: list) -> str:
    """Ad-hoc sweeps are named by what they search, so the same command resumes its study."""
    kept = sorted(o for o in passthrough if changes_run(o))
    text = json.dumps([space, kept, objectives], sort_keys=True, default=str)
    return "adhoc-" + hashlib.sha256(text.encode()).hexdigest()[:8]

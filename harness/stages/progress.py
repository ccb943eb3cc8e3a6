"""What training reports while it runs: the caller's `Progress`, and the `Monitor` interface a
sweep implements to watch (and stop) a trial. A module of its own so the train stage and its
callbacks share it without importing each other."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class Monitor(Protocol):
    """Watches a trial's validation metrics; what a sweep hands a trial to prune it
    (harness.sweep.pruning). The train stage knows nothing else of sweeps."""

    eval_on_start: bool  # also evaluate before the first step (a first rate of improvement)

    def report(self, metrics: Mapping[str, float], step: int) -> str | None:
        """Called at every validation with `eval/...` metrics; returns why training should
        stop now, or None to go on."""


@dataclass
class Progress:
    """What training has done so far. The caller owns it, so a trial that fails or is stopped
    still knows the steps, tokens and seconds it spent."""

    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_tokens: int = 0
    train_s: float = 0.0
    stopped_at: int | None = None  # the step a monitor stopped training at
    stop_reason: str | None = None

"""The trainer callbacks of the train stage: guards, progress, monitors (a module of its own
because importing transformers' callback base loads the whole trainer stack, which
validation does not need)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from transformers import TrainerCallback

from harness.config.errors import TrainingError
from harness.stages.distributed import from_rank_0
from harness.stages.progress import Monitor, Progress
from harness.stages.technique import check_adapter_grads

log = logging.getLogger("harness.stages.train")


class GuardCallback(TrainerCallback):
    """Fails loudly instead of training on silently: zero adapter gradients after the first
    backward pass, or a non-finite loss at any logged step."""

    def __init__(self, check_grads: bool):
        self.check_grads = check_grads
        self.first_grad_norm: float | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.check_grads and self.first_grad_norm is None:
            self.first_grad_norm = check_adapter_grads(model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingError(f"training loss became {loss} at step {state.global_step}")


class HistoryCallback(TrainerCallback):
    """Collects logged losses with slash names into `progress` and logs every `every` steps."""

    def __init__(self, progress: Progress, every: int = 10):
        self.progress = progress
        self.history = self.progress.history
        self.every = every
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.steps = int(state.global_step)
        self.progress.train_tokens = int(state.num_input_tokens_seen)
        self.progress.train_s = time.perf_counter() - self.start

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        entry = {"step": state.global_step}
        if "loss" in logs:
            entry["train/loss"] = float(logs["loss"])
        if "grad_norm" in logs:
            entry["train/grad_norm"] = float(logs["grad_norm"])
        if "eval_loss" in logs:
            entry["eval/loss"] = float(logs["eval_loss"])
        if len(entry) > 1:
            # Tokens and seconds so far: steady-state throughput skips the first steps.
            entry["tokens"] = int(state.num_input_tokens_seen)
            entry["time_s"] = round(time.perf_counter() - self.start, 4)
            self.history.append(entry)
        if "eval/loss" in entry or ("train/loss" in entry and state.global_step % self.every == 0):
            shown = "  ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "step")
            log.info("step %d/%d  %s", state.global_step, state.max_steps, shown)


class MonitorCallback(TrainerCallback):
    """Hands every validation to the monitors; stops training (at the end of the step) when
    one of them says so, and notes the step and the reason in `progress`."""

    def __init__(self, monitors: Sequence[Monitor], progress: Progress):
        self.monitors, self.progress = list(monitors), progress

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        named = {"eval/" + k.removeprefix("eval_"): float(v) for k, v in (metrics or {}).items()
                 if isinstance(v, (int, float))}
        reason = None
        if state.is_world_process_zero:  # one report per evaluation, not one per process
            for monitor in self.monitors:
                said = monitor.report(named, int(state.global_step))
                reason = reason or said
        reason = from_rank_0(reason)  # every process stops at the same step, or none does
        if reason is not None and self.progress.stopped_at is None:
            self.progress.stopped_at, self.progress.stop_reason = int(state.global_step), reason
            control.should_training_stop = True
        return control


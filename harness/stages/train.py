"""Train stage: TRL SFTTrainer with our optimizer, schedule, evaluation and checkpoint settings.

SFTConfig has defaults of its own (bf16=True, gradient checkpointing on, lr 2e-5): every one
that matters is set here from the config, so none of them overrides ours silently.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

import harness
from harness.config.errors import ConfigError
from harness.stages import logger, optimizer
from harness.stages.data import Splits, to_trl
from harness.stages.loss import (
    Head,
    SupervisedLM,
    base_model,
    compiled,
    find_head,
    resolve_kernel,
    validate_loss,
)
from harness.stages.model import compute_dtype, device
from harness.stages.progress import Monitor, Progress

log = logging.getLogger(__name__)

# train.compile=null (auto) compiles runs of at least this many optimizer steps. CPU: the
# regional compile pays back after ~140 steps from an empty kernel cache and ~45 with an
# earlier trial's kernels in paths.cache_dir (BENCHMARKS.md "When compiling pays back"): at
# 100 a lone first run loses a little, a sweep's later trials gain. CUDA: a step takes
# milliseconds to a second, so the same compile takes far more steps to pay back; 1,000 is
# an estimate until scripts/gpu_check.sh has measured it.
COMPILE_MIN_STEPS = {"cpu": 100, "cuda": 1000}
# train.gradient_checkpointing=null (auto) turns it on from this many parameters: below, the
# activations of a batch of 4 at 2,048 tokens fit beside the weights on a 24 GB card.
CHECKPOINTING_MIN_PARAMS = 3e9
# Steps between loss logs: each log is a device-to-host sync, free on CPU, a stall on CUDA.
LOG_EVERY = {"cpu": 1, "cuda": 10}
# Rows are tokenized before training and collate in microseconds; on CUDA two workers keep
# the (pinned) next batch ready. The SLURM presets' cpus_per_task count them.
DATALOADER_WORKERS = {"cpu": 0, "cuda": 2}


def device_type() -> str:
    """"cpu" or "cuda": the keys of the per-device tables above (model.device() decides)."""
    return device().type


def use_deterministic(tr: DictConfig) -> bool:
    """train.deterministic, with None (auto) resolved per device: on on CPU, off on CUDA."""
    return tr.deterministic if tr.deterministic is not None else device_type() == "cpu"


def use_gradient_checkpointing(tr: DictConfig, model: torch.nn.Module) -> bool:
    """train.gradient_checkpointing, with None (auto) resolved by the model's size."""
    if tr.gradient_checkpointing is not None:
        return bool(tr.gradient_checkpointing)
    from harness.stages.technique import count_params

    return count_params(model)[1] >= CHECKPOINTING_MIN_PARAMS


def use_tf32(tr: DictConfig) -> bool:
    """train.tf32, with None (auto) resolved: on where the GPU has TF32 matmuls."""
    from transformers.utils import is_torch_tf32_available

    available = is_torch_tf32_available()
    if tr.tf32 and not available:
        raise ConfigError("train.tf32=true needs an Ampere or newer NVIDIA GPU; use "
                          "train.tf32=null (auto) or false")
    return available if tr.tf32 is None else bool(tr.tf32)


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    eval_loss: float | None
    train_tokens: int
    train_s: float
    grad_norm_first_step: float | None
    history: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    loss: str = "full_logits"  # supervised: the loss from the supervised positions only
    compiled: str | None = None  # train.compile_scope where the step was compiled
    # FSDP: the trained weights gathered whole on rank 0 (harness.trial.run.unsharded)
    full_state: dict | None = None


@contextlib.contextmanager
def kept_random_state():
    """Restores Python's, NumPy's and torch's (CPU and CUDA) random states on exit.

    Transformers' own `eval_on_start` draws from them before the training data order is
    drawn, so a trial evaluated at step 0 would train on other batches than the same
    configuration without it, and would not reproduce from its config hash.
    """
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class HarnessSFTTrainer(SFTTrainer):
        """SFTTrainer with three changes:

        - With a `head` (train.fused_loss), the loss from the supervised positions only
          (harness.stages.loss), through `Trainer.compute_loss` so its gradient-accumulation
          and multi-device scaling apply unchanged.
        - Else, off CUDA, the plain cross-entropy of `Trainer.compute_loss`: TRL's fused-lm-head
          log-prob kernel falls back to a torch tile loop without Triton that was several times
          slower per step on CPU (and only feeds its entropy/accuracy logs).
        - A test hook that turns the loss into NaN from a given step (failure isolation).
        """

        nan_from_step: int | None = None
        head: Head | None = None

        def compute_loss(self, model, inputs, *args, **kwargs):
            if self.head is not None:
                lm = SupervisedLM(model, self.head, self.accelerator.autocast)
                out = Trainer.compute_loss(self, lm, inputs, *args, **kwargs)
            elif torch.cuda.is_available():
                out = super().compute_loss(model, inputs, *args, **kwargs)
            else:
                inputs = {**inputs, "use_cache": False}
                out = Trainer.compute_loss(self, model, inputs, *args, **kwargs)
            if self.nan_from_step is not None and self.state.global_step >= self.nan_from_step:
                if isinstance(out, tuple):
                    return (out[0] * float("nan"), *out[1:])
                return out * float("nan")
            return out

    return HarnessSFTTrainer


def keep_compiled_kernels(cache_dir: str | Path) -> Path:
    """Puts torch.compile's kernel cache under paths.cache_dir unless the user set
    TORCHINDUCTOR_CACHE_DIR: the next trial, run or SLURM job sharing that folder reuses the
    compiled kernels instead of rebuilding them in /tmp. Returns the folder in use."""
    folder = Path(harness.USER_INDUCTOR_CACHE or Path(cache_dir) / "torchinductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # torch reads it at every lookup
    return folder


def use_compile(train_cfg: DictConfig, n_train: int | None = None) -> bool:
    """train.compile, with None (auto) resolved: on when the run is long enough to pay back
    the one-off compile on this device. Epoch-based runs need `n_train` (training rows) to
    count steps."""
    if train_cfg.compile is not None:
        return bool(train_cfg.compile)
    if train_cfg.max_steps > 0:
        steps = train_cfg.max_steps
    elif n_train:
        steps = train_cfg.epochs * math.ceil(n_train / (train_cfg.batch_size * train_cfg.grad_accum))
    else:
        return False
    return steps >= COMPILE_MIN_STEPS[device_type()]


def validate_train(tr: DictConfig) -> None:
    if tr.batch_size <= 0 or tr.grad_accum <= 0:
        raise ConfigError("train.batch_size and train.grad_accum must be > 0")
    if tr.max_steps <= 0 and not tr.epochs > 0:
        raise ConfigError("set train.max_steps > 0 or train.epochs > 0")
    for key in ("eval_every", "save_every", "early_stopping_patience"):
        if tr[key] < 0:
            raise ConfigError(f"train.{key}={tr[key]}: must be >= 0")
    if tr.max_eval_rows < 1:
        raise ConfigError(f"train.max_eval_rows={tr.max_eval_rows}: must be >= 1")
    validate_loss(tr)
    use_tf32(tr)


def block_classes(model: torch.nn.Module) -> list[str]:
    """The class names of the model's decoder blocks (transformers' `_no_split_modules`)."""
    return list(getattr(base_model(model), "_no_split_modules", None) or [])


def sft_config(cfg: DictConfig, checkpoint_dir: Path, has_val: bool, dtype: torch.dtype,
               checkpointing: bool | None = None, layer_classes: Sequence[str] = ()):
    """SFTConfig from our config groups; every default that changes results is explicit.
    `checkpointing`: train.gradient_checkpointing resolved for the model (auto: off here);
    `layer_classes`: the model's decoder block classes (what FSDP shards one by one)."""
    from trl import SFTConfig

    from harness.stages import distributed

    tr, dev = cfg.train, device_type()
    world = distributed.ranks().world_size
    batch = distributed.per_device_batch(tr.batch_size, world)
    optimizer.validate_optimizer(cfg.optimizer)
    validate_train(tr)
    evaluate = has_val and tr.eval_every > 0
    early = evaluate and tr.early_stopping_patience > 0
    save_steps = tr.eval_every if early else tr.save_every  # best-model reload needs both aligned
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        max_steps=tr.max_steps if tr.max_steps > 0 else -1,
        num_train_epochs=tr.epochs,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=tr.grad_accum,
        **optimizer.trainer_args(cfg.optimizer, dev),
        **precision_flags(dtype),
        tf32=use_tf32(tr),
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=bool(tr.gradient_checkpointing) if checkpointing is None
        else checkpointing,
        torch_compile=False,  # train() compiles in place, by train.compile_scope
        max_length=cfg.model.max_length,
        packing=tr.packing,
        padding_free=tr.packing,
        train_sampling_strategy="group_by_length" if tr.group_by_length and not tr.packing else "random",
        eval_strategy="steps" if evaluate else "no",
        eval_steps=tr.eval_every if evaluate else None,
        save_strategy="steps" if save_steps > 0 else "no",
        save_steps=max(save_steps, 1),
        save_total_limit=tr.save_total_limit,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        logging_steps=LOG_EVERY[dev],
        logging_nan_inf_filter=False,  # a NaN loss must reach GuardCallback, not be averaged away
        report_to=logger.report_to(cfg.logger, cfg.paths.log_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        full_determinism=use_deterministic(tr),
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=DATALOADER_WORKERS[dev],
        dataloader_pin_memory=dev == "cuda",
        disable_tqdm=True,
        dataset_num_proc=None,
        **distributed.trainer_args(cfg, world, list(layer_classes)),
    )


def precision_flags(compute: torch.dtype) -> dict[str, bool]:
    """The trainer's autocast flags for a compute dtype (model.compute_dtype resolves it)."""
    return {"bf16": compute == torch.bfloat16, "fp16": compute == torch.float16}


def _datasets(splits: Splits, cfg: DictConfig, use_chat: bool):
    from datasets import Dataset

    train = Dataset.from_list([to_trl(r, use_chat) for r in splits.train])
    val_rows = splits.val[: cfg.train.max_eval_rows]
    val = Dataset.from_list([to_trl(r, use_chat) for r in val_rows]) if val_rows else None
    return train, val


def build_trainer(model, tokenizer, args, train_ds, val_ds, tr: DictConfig, callbacks=()):
    """The harness's SFTTrainer, its loss path chosen by train.fused_loss."""
    from transformers import PrinterCallback

    trainer = _trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        processing_class=tokenizer, callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; HistoryCallback logs instead
    trainer.nan_from_step = tr.inject_nan_at_step
    trainer.head, why = find_head(model, resolve_kernel(tr.fused_loss))
    log.info("training loss: %s (%s)", "supervised positions only" if trainer.head
             else "full logits", why)
    return trainer


def train(model, tokenizer, splits: Splits, cfg: DictConfig, run_dir: Path,
          monitors: Sequence[Monitor] = (), progress: Progress | None = None) -> TrainResult:
    """Trains in place; resumes from the run's last checkpoint when there is one. `progress`
    (the caller's) is kept up to date at every step, also when training raises."""
    import datasets
    from transformers import EarlyStoppingCallback

    from harness.stages.callbacks import GuardCallback, HistoryCallback, MonitorCallback

    datasets.disable_progress_bars()
    progress = progress if progress is not None else Progress()
    use_chat = tokenizer.chat_template is not None
    train_ds, val_ds = _datasets(splits, cfg, use_chat)
    args = sft_config(cfg, run_dir / "checkpoints", val_ds is not None,
                      compute_dtype(cfg.model, cfg.technique),
                      use_gradient_checkpointing(cfg.train, model), block_classes(model))
    compile_step = use_compile(cfg.train, len(train_ds))
    if compile_step:
        log.info("compiled kernels: %s", keep_compiled_kernels(cfg.paths.cache_dir))
    guard, history = GuardCallback(cfg.train.check_grads), HistoryCallback(progress)
    extra = [guard, history, MonitorCallback(monitors, progress)]
    if args.load_best_model_at_end:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = build_trainer(model, tokenizer, args, train_ds, val_ds, cfg.train, extra)
    resume = cfg.train.resume and any((run_dir / "checkpoints").glob("checkpoint-*"))
    if resume:
        log.info("resuming from the last checkpoint in %s", run_dir / "checkpoints")
    # The learning-curve pruner's first rate of improvement needs a report at step 0.
    start_eval = (args.eval_strategy != "no" and not resume
                  and any(getattr(m, "eval_on_start", False) for m in monitors))
    start = time.perf_counter()
    with compiled(model, cfg.train.compile_scope) if compile_step else contextlib.nullcontext():
        if start_eval:
            with kept_random_state():  # the training then runs exactly as without it
                trainer.evaluate()
        if progress.stopped_at is None:
            trainer.train(resume_from_checkpoint=True if resume else None)
    train_s = time.perf_counter() - start
    state = trainer.state
    progress.steps, progress.train_tokens = int(state.global_step), int(state.num_input_tokens_seen)
    progress.train_s = train_s
    losses = [h["train/loss"] for h in history.history if "train/loss" in h]
    evals = [h["eval/loss"] for h in history.history if "eval/loss" in h]
    if val_ds is not None and not evals and progress.stopped_at is None:
        evals = [trainer.evaluate()["eval_loss"]]  # final validation loss for the record
    # The optimizer state (2x the trainable weights for AdamW) is not needed past here; the
    # accelerator keeps its own references to it.
    # FSDP leaves each process a shard of the weights: rank 0 gathers them whole (on the
    # host; every rank takes part) to save and evaluate them without the other processes
    full_state = (trainer.accelerator.get_state_dict(trainer.model)
                  if getattr(trainer, "is_fsdp_enabled", False) else None)
    trainer.accelerator.free_memory()
    trainer.optimizer = trainer.lr_scheduler = None
    return TrainResult(
        steps=state.global_step,
        train_loss=sum(losses[-5:]) / max(len(losses[-5:]), 1) if losses else float("nan"),
        eval_loss=evals[-1] if evals else None,
        train_tokens=int(state.num_input_tokens_seen),
        train_s=train_s,
        grad_norm_first_step=guard.first_grad_norm,
        history=history.history,
        stopped_early=state.global_step < state.max_steps,
        full_state=full_state,
        loss=f"supervised ({trainer.head.kernel})" if trainer.head else "full_logits",
        compiled=cfg.train.compile_scope if compile_step else None,
    )

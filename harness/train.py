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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig
from transformers import EarlyStoppingCallback, PrinterCallback, TrainerCallback

import harness
from harness.data import Splits, to_trl
from harness.errors import ConfigError, TrainingError
from harness.model import compute_dtype
from harness.technique import check_adapter_grads

log = logging.getLogger(__name__)

OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit"}
SCHEDULERS = ("cosine", "linear", "constant")
# train.compile=null (auto) compiles runs of at least this many optimizer steps. Measured on 2
# CPU cores (bf16 LoRA, SmolLM2-135M, eager attention, benchmarks.throughput's harness side,
# 2026-11-24): 300 tokens/s (~4.1 s a step) uncompiled, ~410 (~3.0 s) compiled. The compiles
# cost 458 s with an empty kernel cache and ~175 s once keep_compiled_kernels' folder holds the
# kernels, so they pay back after ~160 steps (~420 the very first time on a machine). 200
# leaves room for machines where compiling is slower or gains less (AVX2-only fp32 CPUs: not
# measured).
COMPILE_MIN_STEPS = 200


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


class HistoryCallback(TrainerCallback):
    """Collects logged losses with slash names and logs progress every `every` steps."""

    def __init__(self, every: int = 10):
        self.history: list[dict] = []
        self.every = every
        self.start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        entry = {"step": state.global_step}
        if "loss" in logs:
            entry["train/loss"] = float(logs["loss"])
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


def _trainer_class():
    from transformers import Trainer
    from trl import SFTTrainer

    class HarnessSFTTrainer(SFTTrainer):
        """SFTTrainer with two changes:

        - Off CUDA, the plain cross-entropy of `Trainer.compute_loss`: TRL's fused-lm-head
          log-prob kernel falls back to a torch tile loop without Triton that was several times
          slower per step on CPU (and only feeds its entropy/accuracy logs).
        - A test hook that turns the loss into NaN from a given step (failure isolation).
        """

        nan_from_step: int | None = None

        def compute_loss(self, model, inputs, *args, **kwargs):
            if torch.cuda.is_available():
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
    the one-off compile. Epoch-based runs need `n_train` (training rows) to count steps."""
    if train_cfg.compile is not None:
        return bool(train_cfg.compile)
    if train_cfg.max_steps > 0:
        steps = train_cfg.max_steps
    elif n_train:
        steps = train_cfg.epochs * math.ceil(n_train / (train_cfg.batch_size * train_cfg.grad_accum))
    else:
        return False
    return steps >= COMPILE_MIN_STEPS


def sft_config(cfg: DictConfig, checkpoint_dir: Path, has_val: bool, dtype: torch.dtype,
               n_train: int | None = None):
    """SFTConfig from our config groups; every default that changes results is explicit."""
    from trl import SFTConfig

    opt, tr = cfg.optimizer, cfg.train
    if opt.name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name={opt.name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if opt.scheduler not in SCHEDULERS:
        raise ConfigError(f"optimizer.scheduler={opt.scheduler!r}: choose {', '.join(SCHEDULERS)}")
    if not opt.lr > 0:
        raise ConfigError(f"optimizer.lr={opt.lr}: the learning rate must be > 0")
    if tr.batch_size <= 0 or tr.grad_accum <= 0:
        raise ConfigError("train.batch_size and train.grad_accum must be > 0")
    if tr.max_steps <= 0 and not tr.epochs > 0:
        raise ConfigError("set train.max_steps > 0 or train.epochs > 0")
    evaluate = has_val and tr.eval_every > 0
    early = evaluate and tr.early_stopping_patience > 0
    save_steps = tr.eval_every if early else tr.save_every  # best-model reload needs both aligned
    return SFTConfig(
        output_dir=str(checkpoint_dir),
        max_steps=tr.max_steps if tr.max_steps > 0 else -1,
        num_train_epochs=tr.epochs,
        per_device_train_batch_size=tr.batch_size,
        per_device_eval_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.grad_accum,
        learning_rate=opt.lr,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.betas[0],
        adam_beta2=opt.betas[1],
        max_grad_norm=opt.max_grad_norm,
        optim=OPTIMIZERS[opt.name],
        lr_scheduler_type=opt.scheduler,
        warmup_steps=opt.warmup_ratio,  # a float < 1 is a ratio of total steps
        **precision_flags(dtype),
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=tr.gradient_checkpointing,
        torch_compile=use_compile(tr, n_train),
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
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss must reach GuardCallback, not be averaged away
        report_to=_report_to(cfg.logger, cfg.paths.log_dir),
        seed=cfg.seed,
        data_seed=cfg.seed,
        full_determinism=tr.deterministic,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=True,
        dataset_num_proc=None,
    )


def precision_flags(compute: torch.dtype) -> dict[str, bool]:
    """The trainer's autocast flags for a compute dtype (model.compute_dtype resolves it)."""
    return {"bf16": compute == torch.bfloat16, "fp16": compute == torch.float16}


def _report_to(logger_cfg: DictConfig, log_dir: str) -> list[str]:
    """Trainer integrations; their files stay inside the run's log dir (wandb offline)."""
    logger = logger_cfg.name
    if logger == "wandb":
        os.environ["WANDB_MODE"] = logger_cfg.mode  # offline unless the user says online
        os.environ.setdefault("WANDB_PROJECT", logger_cfg.project)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(log_dir) / "tensorboard"))
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        os.environ.setdefault(var, str(Path(log_dir) / "wandb"))
    loggers = {"none": [], "tensorboard": ["tensorboard"], "wandb": ["wandb"]}
    if logger not in loggers:
        raise ConfigError(f"logger.name={logger!r}: choose one of {', '.join(loggers)}")
    return loggers[logger]


def _datasets(splits: Splits, cfg: DictConfig, use_chat: bool):
    from datasets import Dataset

    train = Dataset.from_list([to_trl(r, use_chat) for r in splits.train])
    val_rows = splits.val[: cfg.train.max_eval_rows]
    val = Dataset.from_list([to_trl(r, use_chat) for r in val_rows]) if val_rows else None
    return train, val


def train(model, tokenizer, splits: Splits, cfg: DictConfig, run_dir: Path,
          callbacks: list | None = None) -> TrainResult:
    """Trains in place; resumes from the run's last checkpoint when there is one."""
    import datasets

    datasets.disable_progress_bars()
    use_chat = tokenizer.chat_template is not None
    train_ds, val_ds = _datasets(splits, cfg, use_chat)
    args = sft_config(cfg, run_dir / "checkpoints", val_ds is not None,
                      compute_dtype(cfg.model, cfg.technique), len(train_ds))
    if args.torch_compile:
        log.info("compiled kernels: %s", keep_compiled_kernels(cfg.paths.cache_dir))
    guard, history = GuardCallback(cfg.train.check_grads), HistoryCallback()
    extra = [guard, history, *(callbacks or [])]
    if args.load_best_model_at_end:
        extra.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = _trainer_class()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
        processing_class=tokenizer, callbacks=extra,
    )
    trainer.remove_callback(PrinterCallback)  # raw dicts on stdout; HistoryCallback logs instead
    trainer.nan_from_step = cfg.train.inject_nan_at_step
    resume = cfg.train.resume and any((run_dir / "checkpoints").glob("checkpoint-*"))
    if resume:
        log.info("resuming from the last checkpoint in %s", run_dir / "checkpoints")
    # The learning-curve pruner's first rate of improvement needs a report at step 0.
    start_eval = (args.eval_strategy != "no" and not resume
                  and any(getattr(cb, "eval_on_start", False) for cb in callbacks or []))
    start = time.perf_counter()
    try:
        if start_eval:
            with kept_random_state():  # the training then runs exactly as without it
                trainer.evaluate()
        trainer.train(resume_from_checkpoint=True if resume else None)
    except BaseException as exc:  # pruned, failed or interrupted: what was spent still counts
        exc.partial = {"history": history.history,
                       "train_tokens": int(trainer.state.num_input_tokens_seen),
                       "steps": int(trainer.state.global_step),
                       "train_s": time.perf_counter() - start}
        raise
    train_s = time.perf_counter() - start
    losses = [h["train/loss"] for h in history.history if "train/loss" in h]
    evals = [h["eval/loss"] for h in history.history if "eval/loss" in h]
    if val_ds is not None and not evals:  # final validation loss for the record
        evals = [trainer.evaluate()["eval_loss"]]
    state = trainer.state
    return TrainResult(
        steps=state.global_step,
        train_loss=sum(losses[-5:]) / max(len(losses[-5:]), 1) if losses else float("nan"),
        eval_loss=evals[-1] if evals else None,
        train_tokens=int(state.num_input_tokens_seen),
        train_s=train_s,
        grad_norm_first_step=guard.first_grad_norm,
        history=history.history,
        stopped_early=state.global_step < state.max_steps,
    )

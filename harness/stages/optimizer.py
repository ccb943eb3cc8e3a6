"""Optimizer stage (`conf/optimizer/`): which optimizer and learning-rate schedule the trainer
uses, as the Trainer's own argument names."""

from __future__ import annotations

from omegaconf import DictConfig

from harness.config.errors import ConfigError

# optimizer.name -> transformers' `optim` name, per device: on CUDA torch's fused AdamW
# (one kernel for every parameter's update instead of several per tensor; same maths).
OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit"}
CUDA_OPTIMIZERS = {"adamw": "adamw_torch_fused"}
SCHEDULERS = ("cosine", "linear", "constant")


def validate_optimizer(opt: DictConfig) -> None:
    if opt.name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name={opt.name!r}: choose one of {', '.join(OPTIMIZERS)}")
    if opt.scheduler not in SCHEDULERS:
        raise ConfigError(f"optimizer.scheduler={opt.scheduler!r}: choose one of "
                          f"{', '.join(SCHEDULERS)}")
    if not opt.lr > 0:
        raise ConfigError(f"optimizer.lr={opt.lr}: the learning rate must be > 0")
    if not 0 <= opt.warmup_ratio < 1:
        raise ConfigError(f"optimizer.warmup_ratio={opt.warmup_ratio}: must be in [0, 1)")
    if len(opt.betas) != 2 or not all(0 <= b < 1 for b in opt.betas):
        raise ConfigError(f"optimizer.betas={list(opt.betas)}: two values in [0, 1)")
    if opt.weight_decay < 0 or opt.max_grad_norm < 0:
        raise ConfigError("optimizer.weight_decay and optimizer.max_grad_norm must be >= 0")


def trainer_args(opt: DictConfig, device_type: str = "cpu") -> dict:
    """The optimizer and schedule as TrainingArguments keywords."""
    optimizers = {**OPTIMIZERS, **CUDA_OPTIMIZERS} if device_type == "cuda" else OPTIMIZERS
    return {
        "optim": optimizers[opt.name],
        "learning_rate": opt.lr,
        "weight_decay": opt.weight_decay,
        "adam_beta1": opt.betas[0],
        "adam_beta2": opt.betas[1],
        "max_grad_norm": opt.max_grad_norm,
        "lr_scheduler_type": opt.scheduler,
        "warmup_steps": opt.warmup_ratio,  # a float < 1 is a ratio of total steps
    }

"""Logger stage (`conf/logger/`): where the trainer's metrics stream to during training. The
run's record is written whatever the logger; these only add live views."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from harness.config.errors import ConfigError

LOGGERS = {"none": [], "tensorboard": ["tensorboard"], "wandb": ["wandb"]}
WANDB_MODES = ("offline", "online", "disabled")


def validate_logger(logger_cfg: DictConfig) -> None:
    if logger_cfg.name not in LOGGERS:
        raise ConfigError(f"logger.name={logger_cfg.name!r}: choose one of {', '.join(LOGGERS)}")
    if logger_cfg.name == "wandb" and logger_cfg.mode not in WANDB_MODES:
        raise ConfigError(f"logger.mode={logger_cfg.mode!r}: choose one of {', '.join(WANDB_MODES)}")


def report_to(logger_cfg: DictConfig, log_dir: str) -> list[str]:
    """The Trainer's `report_to`; the integrations' files stay inside the run's log dir
    (wandb offline unless the config says online)."""
    validate_logger(logger_cfg)
    if logger_cfg.name == "wandb":
        os.environ["WANDB_MODE"] = logger_cfg.mode
        os.environ.setdefault("WANDB_PROJECT", logger_cfg.project)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(Path(log_dir) / "tensorboard"))
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        os.environ.setdefault(var, str(Path(log_dir) / "wandb"))
    return LOGGERS[logger_cfg.name]

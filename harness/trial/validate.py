"""One validation pass over a trial's config and data, before anything loads or downloads.

Every enumerated setting of every group is checked against its allowed values, every
number against its range, the price table, the eval tasks and local benchmark files,
4-bit support for QLoRA on this device, and every row of a local dataset file against its
format. The first problem raises a ConfigError or DataError that names the setting (or
file:line) and what is allowed. Each check lives with its stage (`validate_<group>` in
harness/stages/); this module only runs them all.
"""

from __future__ import annotations

from omegaconf import DictConfig

from harness.config.errors import ConfigError


def validate(cfg: DictConfig) -> None:
    from harness.stages.cost import validate_cost
    from harness.stages.data import validate_dataset
    from harness.stages.distributed import ranks, validate_distributed
    from harness.stages.evaluate import validate_eval_config
    from harness.stages.logger import validate_logger
    from harness.stages.model import check_4bit_support, validate_model
    from harness.stages.optimizer import validate_optimizer
    from harness.stages.technique import validate_technique
    from harness.stages.train import validate_train

    if not isinstance(cfg.seed, int):
        raise ConfigError(f"seed={cfg.seed!r}: an integer")
    validate_model(cfg.model)
    validate_technique(cfg.technique)
    if cfg.technique.name == "qlora":
        check_4bit_support()  # bitsandbytes on this device, before a model is loaded for it
    validate_optimizer(cfg.optimizer)
    validate_train(cfg.train)
    validate_distributed(cfg, ranks().world_size)
    validate_logger(cfg.logger)
    validate_cost(cfg.cost)
    validate_eval_config(cfg.eval, cfg.dataset)
    validate_dataset(cfg.dataset)  # last: reads every row of a local file

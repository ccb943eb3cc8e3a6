"""Technique stage: turn the loaded base model into what trains.

- full: every weight trains, in fp32 master weights under half-precision autocast.
- lora (Hu et al. 2021): frozen base + low-rank adapters on the target modules.
- qlora (Dettmers et al. 2023): lora on a 4-bit NF4 base (loaded by harness.stages.model).
- dora (Liu et al. 2024): lora with a trained magnitude per output (PEFT use_dora).
"""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig, OmegaConf

from harness.config.errors import ConfigError, TrainingError
from harness.stages.model import resolve_dtype

log = logging.getLogger(__name__)

TECHNIQUES = ("full", "lora", "qlora", "dora")
ADAPTERS = ("lora", "qlora", "dora")


def validate_technique(technique_cfg: DictConfig) -> None:
    """Checks values where they are used; each error names the setting."""
    name = technique_cfg.name
    if name not in TECHNIQUES:
        raise ConfigError(f"technique.name={name!r}: choose one of {', '.join(TECHNIQUES)}")
    if not technique_cfg.lr > 0:
        raise ConfigError(f"technique.lr={technique_cfg.lr}: the learning rate must be > 0")
    if name == "full":
        return
    if "r" not in technique_cfg:
        raise ConfigError(f"technique={name}: its config has no LoRA options; its YAML must "
                          "extend technique_lora_schema (technique_qlora_schema for qlora)")
    if technique_cfg.r <= 0:
        raise ConfigError(f"technique.r={technique_cfg.r}: the LoRA rank must be > 0")
    if technique_cfg.alpha <= 0:
        raise ConfigError(f"technique.alpha={technique_cfg.alpha}: must be > 0")
    if not 0 <= technique_cfg.dropout < 1:
        raise ConfigError(f"technique.dropout={technique_cfg.dropout}: must be in [0, 1)")
    targets = technique_cfg.target_modules
    if not isinstance(targets, str) and not (targets and all(isinstance(m, str) for m in targets)):
        raise ConfigError(f"technique.target_modules={targets!r}: attention, all-linear, "
                          "module names or a regex")
    if name == "qlora":
        if technique_cfg.quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"technique.quant_type={technique_cfg.quant_type!r}: nf4 or fp4")
        resolve_dtype(technique_cfg.compute_dtype, "technique.compute_dtype")


def _target_modules(technique_cfg: DictConfig, attention_modules):
    targets = technique_cfg.target_modules
    if targets == "attention":
        return list(attention_modules)
    if isinstance(targets, str):
        return targets  # "all-linear" or a regex
    return list(OmegaConf.to_container(targets))


def apply_technique(model, technique_cfg: DictConfig, attention_modules,
                    gradient_checkpointing: bool = False):
    """Wraps the model for its technique and returns what the trainer optimises.
    `attention_modules` (model.attention_modules) is what target_modules=attention names."""
    validate_technique(technique_cfg)
    if technique_cfg.name == "full":
        if model.dtype in (torch.bfloat16, torch.float16):
            # bf16 keeps 8 bits of mantissa: an AdamW step of lr 5e-5 on a weight of ~0.05 is
            # below half its last bit and rounds away, so bf16 weights barely train. The
            # trainer's autocast still runs the matmuls in the compute dtype.
            model.to(torch.float32)
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if technique_cfg.name == "qlora":
        # Upcasts norms and enables input grads, as the QLoRA recipe does.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing
        )
    peft_config = LoraConfig(
        r=technique_cfg.r,
        lora_alpha=technique_cfg.alpha,
        lora_dropout=technique_cfg.dropout,
        target_modules=_target_modules(technique_cfg, attention_modules),
        use_dora=technique_cfg.name == "dora",
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, peft_config)
    except ValueError as exc:  # PEFT: "Target modules {...} not found in the base model"
        if technique_cfg.target_modules == "attention":
            raise ConfigError(f"technique.target_modules=attention names model.attention_modules="
                              f"{list(attention_modules)}, which this model lacks ({exc}); set "
                              "model.attention_modules to its projection names, or "
                              "technique.target_modules=all-linear") from exc
        raise ConfigError(f"technique.target_modules: {exc}") from exc
    return model


def for_inference(model, technique_cfg: DictConfig, compute: torch.dtype, merge: str | bool):
    """The trained model as it ships, for evaluation: fp32 master weights cast to the compute
    dtype, adapters merged into the base weights (PEFT's merge_and_unload).

    `merge` (eval.merge_adapters): true, false, or auto, which merges LoRA and DoRA everywhere
    (one matmul a layer instead of three; no memory cost) and QLoRA on CPU only, onto its
    4-bit base de-quantized to the compute dtype: the same weights the adapter trained
    against, which bitsandbytes otherwise de-quantizes again on every matmul. On CUDA auto
    keeps QLoRA's 4-bit base: its kernels are fast, and its memory is why QLoRA was chosen.
    """
    if technique_cfg.name == "full":
        if compute != torch.float32 and model.dtype == torch.float32:
            model.to(compute)
        return model
    if merge == "auto":
        merge = technique_cfg.name != "qlora" or model.device.type == "cpu"
    if not merge:
        return model
    if technique_cfg.name == "qlora":
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        peft_config, adapter = model.peft_config["default"], get_peft_model_state_dict(model)
        base = model.unload().dequantize(dtype=compute).to(compute)
        model = get_peft_model(base, peft_config)
        set_peft_model_state_dict(model, adapter)
    return model.merge_and_unload()


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unquantized shape."""
    trainable = total = 0
    for param in model.parameters():
        quant_state = getattr(param, "quant_state", None)
        n = quant_state.shape.numel() if quant_state is not None else param.numel()
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def check_adapter_grads(model: torch.nn.Module) -> float:
    """Total gradient norm of trainable parameters; raises when it is zero or missing.

    Catches the silent failure modes (bitsandbytes 4-bit repack on CPU, a frozen adapter)
    after the first backward pass instead of after an hour of flat loss.
    """
    norms = [p.grad.detach().float().norm() for p in model.parameters()
             if p.requires_grad and p.grad is not None]
    total = float(torch.stack(norms).norm()) if norms else 0.0
    if total == 0.0:
        raise TrainingError(
            "no gradient reached the trainable parameters after the first step "
            f"({len(norms)} parameters had a gradient); the loss would stay flat"
        )
    return total

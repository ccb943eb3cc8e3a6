"""The training loss from the supervised positions only, and regional compilation.

A causal LM's own forward projects every position onto the vocabulary and then throws away
the loss of the prompt and padding positions (label -100). Here the model's forward runs as
usual but asked for its last hidden states and the logits of one position per row only; the
hidden states of the supervised positions are selected, and only those go through the LM
head and the cross-entropy, fused by a library kernel so the logits tensor is never
materialised whole: Liger-Kernel's fused linear cross-entropy on CUDA (or Apple's
cut-cross-entropy), and on CPU the matmul and cross-entropy compiled together by
torch.compile, which keeps the fp32 logits out of memory. The loss is
normalised exactly as transformers' `ForCausalLMLoss` does, so loss and gradients equal the
full-logits path's to rounding.

Regional compilation compiles the repeated decoder block once and reuses the graph for
every layer (https://pytorch.org/tutorials/recipes/regional_compilation.html), in place, so
checkpoints keep their parameter names.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from harness.config.errors import ConfigError

log = logging.getLogger(__name__)

try:  # transformers >= 5.2x returns only the hidden states asked for by index
    from transformers.utils.output_capturing import selected_hidden_states  # noqa: F401

    _LAST_HIDDEN: bool | int = -1
except ImportError:
    _LAST_HIDDEN = True

IGNORE_INDEX = -100
KERNELS = ("auto", "liger", "cce", "torch", "off")
COMPILE_SCOPES = ("blocks", "model")

# Model types whose causal-LM forward is `lm_head(decoder(...))` (optionally soft-capped):
# only for those is the loss from the selected hidden states the same loss. Others (Cohere's
# logit_scale, Granite's logits_scaling, MoE router losses, vision wrappers, ...) keep the
# model's own forward.
PLAIN_HEADS = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "gemma", "gemma2", "gemma3_text",
    "olmo", "olmo2", "starcoder2", "falcon", "gpt_neox", "stablelm",
})


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def cce_available() -> bool:
    return importlib.util.find_spec("cut_cross_entropy") is not None


_GPU_KERNELS = {"liger": ("Liger's", "liger-kernel", liger_available),
                "cce": ("cut-cross-entropy's", "cut-cross-entropy", cce_available)}


def validate_loss(tr: DictConfig, cuda: bool | None = None) -> None:
    """train.fused_loss and train.compile_scope, checked before anything loads."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if tr.fused_loss not in KERNELS:
        raise ConfigError(f"train.fused_loss={tr.fused_loss!r}: choose one of {', '.join(KERNELS)}")
    if tr.fused_loss in _GPU_KERNELS:
        whose, package, available = _GPU_KERNELS[tr.fused_loss]
        if not cuda:
            raise ConfigError(f"train.fused_loss={tr.fused_loss} needs CUDA ({whose} kernels are "
                              "Triton GPU kernels); use train.fused_loss=torch (or auto) on "
                              "this machine")
        if not available():
            raise ConfigError(f"train.fused_loss={tr.fused_loss}: {package} is not installed "
                              f"(pip install {package}), or use train.fused_loss=auto")
    if tr.compile_scope not in COMPILE_SCOPES:
        raise ConfigError(f"train.compile_scope={tr.compile_scope!r}: choose one of "
                          f"{', '.join(COMPILE_SCOPES)}")


def resolve_kernel(setting: str, cuda: bool | None = None) -> str | None:
    """The kernel train.fused_loss names; None for `off` (the model's own full-logits loss)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if setting == "off":
        return None
    if setting == "auto":
        if cuda and liger_available():
            return "liger"
        return "cce" if cuda and cce_available() else "torch"
    return setting


@dataclass
class Head:
    """What the supervised-token loss needs from a causal LM."""

    lm_head: nn.Module
    softcap: float | None
    kernel: str


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def find_head(model: nn.Module, kernel: str | None) -> tuple[Head | None, str]:
    """The model's LM head for `kernel`, or None and the reason the model's own forward must
    compute the loss (the full-logits path)."""
    if kernel is None:
        return None, "train.fused_loss=off"
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return None, "prompt-learning adapters run inside the PEFT model's forward"
    base = base_model(model)
    model_type = getattr(base.config, "model_type", None)
    if model_type not in PLAIN_HEADS:
        return None, f"model type {model_type!r} may transform its logits after the LM head"
    lm_head = base.get_output_embeddings()
    if lm_head is None:
        return None, f"{type(base).__name__} has no LM head"
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return None, f"{type(base).__name__}.forward computes every position's logits"
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return Head(lm_head, softcap, kernel), f"kernel {kernel}"


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                   softcap: float | None) -> torch.Tensor:
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _matmul_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          softcap: float | None) -> torch.Tensor:
    return _cross_entropy(hidden @ weight.T, targets, softcap)


# Not fullgraph: a process that trains many models (a sweep's trials, the tests) meets new
# dtypes, grad modes and requires_grad flags, and past dynamo's recompile limit this runs
# eagerly instead of failing.
_compiled_cross_entropy = torch.compile(_matmul_cross_entropy, dynamic=True)


def _linear_cross_entropy(head: Head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `targets` under `lm_head(hidden)`, [n, d] -> scalar, in the
    dtype the LM head would run in (the autocast dtype where autocast is on)."""
    lm = head.lm_head
    weight = lm.weight if type(lm) is nn.Linear else None
    if weight is not None and torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    plain = weight is not None and weight.dtype == hidden.dtype
    if plain and head.kernel == "liger" and hidden.is_cuda:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        bias = lm.bias.to(weight.dtype) if lm.bias is not None else None
        return liger_fused_linear_cross_entropy(hidden, weight, targets, bias=bias,
                                                reduction="sum", softcap=head.softcap)
    if plain and lm.bias is None and head.kernel == "cce" and hidden.is_cuda:
        from cut_cross_entropy import linear_cross_entropy

        # filter_eps=None: exact gradients (CCE's default skips softmax entries below a
        # threshold, a speed-up that changes the gradients).
        return linear_cross_entropy(hidden, weight, targets, softcap=head.softcap,
                                    reduction="sum", filter_eps=None, impl="cce")
    if plain and lm.bias is None:
        return _compiled_cross_entropy(hidden, weight, targets, head.softcap)
    # An adapter or quantised layer on the LM head, or a bias: the module itself, on the
    # supervised rows only.
    return _cross_entropy(lm(hidden), targets, head.softcap)


def supervised_loss(model: nn.Module, head: Head, autocast, labels: torch.Tensor,
                    num_items_in_batch=None, shift_labels: torch.Tensor | None = None,
                    **inputs) -> torch.Tensor:
    """transformers' causal-LM loss (labels shifted left, -100 ignored; summed and divided by
    `num_items_in_batch` when given, else the mean), from the supervised positions only.
    Through the model's own forward, so wrappers (PEFT, DDP) and compiled modules apply."""
    inputs.update(use_cache=False, output_hidden_states=_LAST_HIDDEN, logits_to_keep=1)
    hidden = model(**inputs).hidden_states[-1]
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    keep = shift_labels != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:  # nothing supervised in this batch: a zero that still reaches every parameter
        return hidden.sum() * 0.0
    with autocast():
        total = _linear_cross_entropy(head, hidden[keep], shift_labels[keep])
    if num_items_in_batch is None:
        return total / n
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class SupervisedLM:
    """Stands in for the model in `Trainer.compute_loss`, which calls it with the batch (and
    `num_items_in_batch` where the model takes loss kwargs) and then applies its own
    gradient-accumulation and multi-device scaling, unchanged."""

    def __init__(self, model: nn.Module, head: Head, autocast=contextlib.nullcontext):
        self.model, self.head, self.autocast = model, head, autocast

    def __call__(self, **inputs) -> dict[str, torch.Tensor]:
        # The model's forward runs under the accelerator's autocast and returns fp32 copies
        # of its outputs; the head and loss run under the same autocast as they did inside it.
        return {"loss": supervised_loss(self.model, self.head, self.autocast, **inputs)}


def repeated_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of identical decoder blocks (the largest such ModuleList)."""
    from accelerate.utils.other import is_repeated_blocks

    lists = [m for m in model.modules() if is_repeated_blocks(m) and len(m) > 1]
    return max(lists, key=len) if lists else None


@contextlib.contextmanager
def compiled(model: nn.Module, scope: str) -> Iterator[None]:
    """Compiles, in place, for the duration of the block: every decoder block (`blocks`: one
    graph, reused by each layer) or the whole model (`model`, also where no repeated blocks
    are found). Eager again on exit: generation afterwards must not recompile for its own
    shapes."""
    blocks = repeated_blocks(model) if scope == "blocks" else None
    targets = list(blocks) if blocks is not None else [model]
    for module in targets:
        module.compile()
    try:
        yield
    finally:
        for module in targets:
            module._compiled_call_impl = None  # what nn.Module.compile set: back to eager

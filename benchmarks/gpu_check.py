"""The GPU check (scripts/gpu_check.sh runs it): what the harness does on a CUDA device, in
one run of a few minutes, written to the `gpu-check` section of BENCHMARKS.md.

    python -m benchmarks.gpu_check [--model smollm2_arch] [--steps 30] [--batch 8]

- the decisions in effect per technique: compute dtype and autocast flags, TF32,
  determinism, optimizer kernel, attention, loss kernel, gradient checkpointing;
- per technique (full, LoRA, DoRA, QLoRA NF4): peak GPU memory and steady tokens/s, each in
  its own process; LoRA also without packing;
- the harness against plain TRL (defaults, and TRL with the harness's settings), uncompiled;
- two trials in one process (as a sweep's default launcher runs them): each reports its
  own training and evaluation peak, the second smaller than the first;
- a 2-trial sweep through the device pool (hydra.sweeper.devices_per_trial=1, two trials
  sharing the one GPU with trials_per_device=2): the GPUs each trial was given, whether the
  two ran at the same time, and their states.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import compose, machine, run_json, table, write_section
from benchmarks.techniques import TECHNIQUES

TRIALS = (("full", []), ("lora", ["technique.r=8"]))


def decisions(model: str) -> list[list]:
    """What each technique resolves to on this device, without training."""
    import torch

    from harness.stages.loss import find_head, resolve_kernel
    from harness.stages.model import compute_dtype, resolve_attention
    from harness.stages.train import (
        precision_flags,
        sft_config,
        use_deterministic,
        use_gradient_checkpointing,
        use_tf32,
    )
    from harness.trial.run import prepare

    rows = []
    for technique in TECHNIQUES:
        tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        cfg = compose([f"model={model}", f"technique={technique}", "eval=none",
                       "dataset.demo.n_train=16", "dataset.demo.n_val=4", "dataset.demo.n_test=4",
                       f"paths.output_dir={tmp}", f"paths.log_dir={tmp}"])
        compute = compute_dtype(cfg.model, cfg.technique)
        ready = prepare(cfg)
        args = sft_config(cfg, tmp / "ckpt", False, compute)
        head, _ = find_head(ready.model, resolve_kernel(cfg.train.fused_loss))
        flags = precision_flags(compute)
        rows.append([
            technique, str(compute).removeprefix("torch."),
            "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "none",
            use_tf32(cfg.train), use_deterministic(cfg.train), args.optim,
            resolve_attention(cfg.model, cfg.technique, compute, packing=True),
            ready.model.config._attn_implementation,
            head.kernel if head else "full logits",
            use_gradient_checkpointing(cfg.train, ready.model),
            str(next(p.dtype for p in ready.model.parameters() if p.requires_grad)).removeprefix("torch."),
        ])
        del ready
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def two_trials(model: str, steps: int, batch: int) -> list[dict]:
    """Two complete trials, one after the other in this process (run() as the sweep calls it)."""
    from harness.trial.run import run

    out = Path(tempfile.mkdtemp(prefix="gpu-check-trials-"))
    metrics = []
    for technique, extra in TRIALS:
        cfg = compose([f"model={model}", f"technique={technique}", *extra, "eval=none",
                       f"train.max_steps={steps}", f"train.batch_size={batch}",
                       "train.eval_every=0", "train.save_every=0",
                       "dataset.demo.n_train=400", "dataset.demo.n_val=8", "dataset.demo.n_test=8",
                       f"paths.output_dir={out}", f"paths.log_dir={out}"])
        m = run(cfg)
        metrics.append({"technique": technique, **{k: m[k] for k in m if k.startswith("mem/")},
                        "tokens_per_s": m["perf/tokens_per_s"]})
    return metrics


def pool_sweep(model: str, steps: int, batch: int) -> list[list]:
    """The smoke sweep's first two trials through the device pool, as `harness-sweep` runs it."""
    import optuna

    out = Path(tempfile.mkdtemp(prefix="gpu-check-pool-"))
    cmd = [sys.executable, "-m", "harness.cli", "--multirun", "+sweeps=smoke", f"model={model}",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.devices_per_trial=1",
           "hydra.sweeper.trials_per_device=2", "hydra.sweeper.pruner.name=none",
           f"train.max_steps={steps}", f"train.batch_size={batch}",
           f"paths.output_dir={out}", f"paths.log_dir={out / 'logs'}",
           f"paths.cache_dir={os.environ.get('HARNESS_CACHE', out / 'cache')}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"pool sweep failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    study = optuna.load_study(study_name="smoke",
                              storage=f"sqlite:///{out / 'sweeps' / 'smoke' / 'study.db'}")
    # the smoke sweep enqueues one trial per technique: those not asked stay WAITING
    trials = [t for t in sorted(study.trials, key=lambda t: t.number) if t.state.is_finished()]
    overlap = (len(trials) == 2 and trials[0].datetime_start < trials[1].datetime_complete
               and trials[1].datetime_start < trials[0].datetime_complete)
    return [[t.number, t.params.get("technique", "?"), ",".join(t.user_attrs.get("devices", [])),
             t.state.name, f"{(t.datetime_complete - t.datetime_start).total_seconds():.0f}",
             "yes" if overlap else "no"] for t in trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2_arch")
    parser.add_argument("--steps", type=int, default=30)  # losses are logged every 10 on CUDA
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--part", help=argparse.SUPPRESS)  # child process: decisions | trials
    args = parser.parse_args()
    if args.part == "decisions":
        print(json.dumps({"rows": decisions(args.model)}))
        return
    if args.part == "trials":
        print(json.dumps({"trials": two_trials(args.model, args.steps, args.batch)}))
        return
    device = machine()
    common = ["--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch)]
    flags = run_json("benchmarks.gpu_check", ["--part", "decisions", "--model", args.model])["rows"]
    print(json.dumps(flags))
    techs = []
    for technique, extra in [(t, []) for t in TECHNIQUES] + [("lora", ["--no-packing"])]:
        r = run_json("benchmarks.techniques", ["--one", technique, *common, *extra])
        print(json.dumps(r))
        techs.append([technique + (" (no packing)" if extra else ""), f"{r['peak_gb']:.2f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['s_per_step']:.3f}", r["dtype"]])
    sides = {side: run_json("benchmarks.throughput", ["--one", side, *common,
                                                      "--override=train.compile=false"])
             for side in ("harness_eager", "trl_default", "trl_same")}
    print(json.dumps(sides))
    trials = run_json("benchmarks.gpu_check", ["--part", "trials", *common])["trials"]
    print(json.dumps(trials))
    pool = pool_sweep(args.model, args.steps, args.batch)
    print(json.dumps(pool))
    tps = {k: v["tokens_per_s"] for k, v in sides.items()}
    body = (
        "### GPU check\n\n"
        f"`bash scripts/gpu_check.sh` — model `{args.model}` (SmolLM2-135M shapes), batch "
        f"{args.batch}, {args.steps} steps, demo dataset, packing on unless noted.\n"
        f"Machine: {device}\n\n"
        "What each technique resolves to here (attention: for packed training / as loaded):\n\n"
        + table(["technique", "compute", "autocast", "tf32", "deterministic", "optim",
                 "attention (packed)", "attention (loaded)", "loss kernel",
                 "grad checkpointing", "trainable dtype"], flags)
        + "\n\n"
        + table(["technique", "peak GPU GB", "tokens/s", "s/step", "dtype"], techs)
        + "\n\n"
        + table(["side", "tokens/s", "harness / side"],
                [[k, f"{v:.0f}", f"{tps['harness_eager'] / v:.2f}x"] for k, v in tps.items()])
        + "\n\nTwo trials in one process (full, then LoRA r8): each one's own peaks.\n\n"
        + table(["trial", "train peak GB", "eval peak GB", "peak GB", "tokens/s"],
                [[t["technique"], f"{t.get('mem/train_peak_gb', 0):.2f}",
                  f"{t.get('mem/eval_peak_gb', 0):.2f}", f"{t['mem/peak_gb']:.2f}",
                  f"{t['tokens_per_s']:.0f}"] for t in trials])
        + "\n\nTwo trials through the device pool (`devices_per_trial=1 trials_per_device=2`):\n\n"
        + table(["trial", "technique", "GPUs", "state", "wall s", "ran together"], pool)
    )
    write_section("gpu-check", body)


if __name__ == "__main__":
    main()

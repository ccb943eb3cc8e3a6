"""Training throughput: the harness against a plain TRL SFTTrainer script, in one invocation,
plus model FLOPs utilisation against this machine's matmul peak measured in the same run.

    python -m benchmarks.throughput [--model smollm2_135m] [--steps 20] [--batch 4] [--override K=V]

Three sides, each in its own process, on the same model, LoRA settings, rows and seed:

- `harness`: `harness.stages.train.train` with the harness's defaults (length-grouped batches, no
  gradient checkpointing, plain cross-entropy off CUDA, torch.compile as auto turns it on for
  the default 400-step trial, and the attention model.attn_implementation=auto picks: eager
  for bf16 on CPU).
- `trl_default`: what a user writes: `SFTTrainer(model, SFTConfig(...), train_dataset)` with
  TRL's defaults (random batches padded to the longest row, gradient checkpointing on), the
  model loaded with transformers' default attention (sdpa).
- `trl_same`: the plain `SFTTrainer` with the harness's own SFTConfig and none of its callbacks
  or loss override: the harness's overhead at identical settings.

Throughput counts useful (non-pad) training tokens per second in steady state (after the first
2 steps, which hold the compiles; their seconds are reported beside it). MFU = achieved
training FLOP/s (4N per token with a frozen base, 6N for full fine-tuning; attention FLOPs not
counted) / the matmul peak of the training dtype, timed in the same invocation, and again with
the causal attention's FLOPs added (6 L d T per token for a row of T tokens, L layers, d query
width: the T x T score and value products, forward and backward, over the half of the scores a
causal kernel computes), as MFU is usually defined (PaLM, nanoGPT and torchtitan count all
T x T scores: 12 L d T). Writes the sections `throughput` and `mfu` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    compose,
    machine,
    run_json,
    steady_tokens_per_s,
    table,
    warmup_seconds,
    write_section,
)
from benchmarks.techniques import default_model

SIDES = ("harness", "trl_default", "trl_same")
SPEEDUP_TARGET, OVERHEAD_TARGET, MFU_TARGET = 1.5, 0.05, 0.45


def _setup(model: str, steps: int, batch: int, overrides: list[str] | tuple = ()):
    from harness.stages.technique import count_params
    from harness.trial.run import prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench-tput-"))
    cfg = compose([
        f"model={model}", "technique=lora", "eval=none", f"train.max_steps={steps}",
        # What train.compile=null (auto) picks for the default 400-step trial; a benchmark of
        # a few steps would otherwise measure the uncompiled short-run path.
        "train.compile=true",
        f"train.batch_size={batch}", "train.eval_every=0", "train.save_every=0",
        "dataset.demo.n_train=400", "dataset.demo.n_val=8", "dataset.demo.n_test=8",
        f"paths.output_dir={tmp}", f"paths.log_dir={tmp}", *overrides,
    ])
    ready = prepare(cfg)
    model_obj, tok, splits = ready.model, ready.tokenizer, ready.splits
    trainable, total = count_params(model_obj)
    return cfg, model_obj, tok, splits, tmp, trainable, total


def _plain_trl(cfg, model, tok, splits, tmp: Path, same: bool) -> list[dict]:
    """A plain SFTTrainer script. `same`: the harness's SFTConfig; else TRL's defaults with
    only what any script sets (steps, batch, lr, dtype, length)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from harness.stages.callbacks import HistoryCallback
    from harness.stages.data import to_trl
    from harness.stages.progress import Progress
    from harness.stages.train import sft_config

    use_chat = tok.chat_template is not None
    train_ds = Dataset.from_list([to_trl(r, use_chat) for r in splits.train])
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    if same:
        args = sft_config(cfg, tmp / "ckpt", False, dtype)
    else:
        args = SFTConfig(
            output_dir=str(tmp / "ckpt"), max_steps=cfg.train.max_steps,
            per_device_train_batch_size=cfg.train.batch_size, learning_rate=cfg.optimizer.lr,
            bf16=dtype == torch.bfloat16, use_cpu=not torch.cuda.is_available(),
            max_length=cfg.model.max_length, seed=cfg.seed, save_strategy="no", report_to=[],
            logging_steps=1, disable_tqdm=True,
            include_num_input_tokens_seen="non_padding",  # measurement only
        )
    history = HistoryCallback(Progress(), every=10**9)  # measurement only: tokens and seconds per step
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                         callbacks=[history])
    trainer.train()
    return history.history


def attention_flops_per_token(model, tok, rows: list[dict], max_length: int) -> float:
    """Causal attention FLOPs per token of the training rows, forward and backward:
    6 L d T^2 per row of T tokens (QK^T and AV forward 2 L d T^2, backward twice that), summed
    over the rows and divided by their tokens. Mean over the whole training split: the
    measured window is a length-grouped sample of it."""
    from harness.stages.data import token_length

    c = model.config
    width = c.num_attention_heads * (getattr(c, "head_dim", None)
                                     or c.hidden_size // c.num_attention_heads)
    lengths = [min(token_length(r, tok), max_length) for r in rows]
    return 6 * c.num_hidden_layers * width * sum(t * t for t in lengths) / sum(lengths)


def measure(model_name: str, side: str, steps: int, batch: int,
            overrides: list[str] | tuple = ()) -> dict:
    from harness.stages.train import train

    if side == "trl_default":  # a user's script loads the model with transformers' default
        overrides = ["model.attn_implementation=sdpa", *overrides]
    cfg, model, tok, splits, tmp, trainable, total = _setup(model_name, steps, batch, overrides)
    attn = attention_flops_per_token(model, tok, splits.train, cfg.model.max_length)
    start = time.perf_counter()
    if side == "harness":
        history = train(model, tok, splits, cfg, tmp / "run").history
    else:
        history = _plain_trl(cfg, model, tok, splits, tmp, same=side == "trl_same")
    wall = time.perf_counter() - start
    dtype = str(next(p.dtype for p in model.parameters() if p.is_floating_point()))
    tokens = [h for h in history if "tokens" in h]
    return {"side": side, "tokens_per_s": steady_tokens_per_s(history), "train_s": wall,
            "warmup_s": warmup_seconds(history),
            "tokens": tokens[-1]["tokens"] if tokens else 0,
            "steps": max((h["step"] for h in history), default=0),
            "trainable": trainable, "total": total, "attn_flops_per_token": attn,
            "dtype": dtype.removeprefix("torch.")}


def matmul_peak(dtype_name: str, n: int = 4096, reps: int = 5) -> float:
    """Best FLOP/s of a square matmul in `dtype_name` on the training device, all threads,
    over sizes doubling from 256 up to `n` while one product takes under 0.2 s: where a
    dtype has no fast kernel (bf16 on a CPU without AVX-512-bf16 runs at ~0.3 GFLOP/s), a
    large product would take minutes. The best over every size and try: the highest peak
    this machine showed is the most conservative denominator for MFU."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, dtype_name)

    def best_time(size: int, tries: int) -> float:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        best = float("inf")
        for _ in range(tries):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    size, peak = min(256, n), 0.0
    while True:
        seconds = best_time(size, reps + 1)
        peak = max(peak, 2 * size**3 / seconds)
        if size >= n or seconds >= 0.2:
            return peak
        size *= 2


def _peaks(dtypes: list[str]) -> dict[str, float]:
    return {d: run_json("benchmarks.throughput", ["--peak", d])["flops"] for d in dtypes}


def _verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--override", action="append", default=[],
                        help="extra config override for every side (repeatable)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one side
    parser.add_argument("--peak", help=argparse.SUPPRESS)  # child process: matmul peak
    args = parser.parse_args()
    model = args.model or default_model()
    if args.one:
        print(json.dumps(measure(model, args.one, args.steps, args.batch, args.override)))
        return
    if args.peak:
        print(json.dumps({"flops": matmul_peak(args.peak)}))
        return
    device = machine()
    # The matmul peak before and after the training sides (the higher one counts): a shared
    # machine's speed drifts within a run, and a low peak would flatter the MFU.
    peaks_before = _peaks(["bfloat16", "float32"])
    res = {}
    for side in SIDES:
        res[side] = run_json("benchmarks.throughput", [
            "--one", side, "--model", model, "--steps", str(args.steps), "--batch", str(args.batch),
            *(f"--override={o}" for o in args.override)])
        print(json.dumps(res[side]))
    dtype = res["harness"]["dtype"]
    peaks_after = _peaks(list(dict.fromkeys([dtype, "bfloat16", "float32"])))
    peaks = {d: max(peaks_after[d], peaks_before.get(d, 0.0)) for d in peaks_after}
    print(json.dumps({"matmul_peak_flops": peaks, "before": peaks_before, "after": peaks_after}))

    speedup = res["harness"]["tokens_per_s"] / res["trl_default"]["tokens_per_s"]
    overhead = 1 - res["harness"]["tokens_per_s"] / res["trl_same"]["tokens_per_s"]
    rows = [[s, f"{r['tokens_per_s']:.0f}", f"{r['tokens']:,}", r["steps"], f"{r['train_s']:.0f}",
             f"{r['warmup_s']:.0f}", f"{r['tokens_per_s'] / res['trl_default']['tokens_per_s']:.2f}x"]
            for s, r in res.items()]
    setting = (f"model `{model}` ({dtype}), LoRA r16 on the attention projections, batch "
               f"{args.batch}, {args.steps} steps, demo dataset (400 training rows), seed 0.")
    body = (
        "### Training throughput: harness vs plain TRL\n\n"
        f"`python -m benchmarks.throughput` — {setting}\nMachine: {device}\n\n"
        + table(["side", "useful tokens/s", "tokens", "steps", "wall s", "first 2 steps s",
                 "vs trl_default"], rows)
        + "\n\n"
        + table(["target", "measured", "verdict"], [
            [f"harness >= {SPEEDUP_TARGET}x plain TRL with its defaults", f"{speedup:.2f}x",
             _verdict(speedup >= SPEEDUP_TARGET)],
            [f"harness overhead <= {OVERHEAD_TARGET:.0%} at identical settings",
             f"{overhead:+.1%}", _verdict(overhead <= OVERHEAD_TARGET)],
        ])
        + "\n\nWhere the speed comes from: TRL's defaults turn gradient checkpointing on (a "
        "second forward pass per step) and batch rows at random, padded to the longest; the "
        "harness turns checkpointing off by default (a 135M-parameter model's activations fit "
        "easily), groups rows of similar length, uses LoRA dropout 0 and compiles the step "
        "(torch.compile, as train.compile=auto does for the default 400-step trial; the "
        "compiles are the first 2 steps' seconds, left out of the steady tokens/s), runs eager "
        "attention in bf16 on CPU (TRL's script loads sdpa, whose CPU flash-attention kernel "
        "runs at about a tenth of the matmul rate), and off "
        "CUDA computes the plain cross-entropy instead of TRL's per-token entropy and accuracy "
        "logging. `trl_same` runs TRL's own SFTTrainer on the harness's model (its attention "
        "too) with the harness's SFTConfig (compiled too): the remaining gap is the "
        "callbacks' and loss override's cost (negative: the harness is faster)."
    )
    write_section("throughput", body)

    h = res["harness"]
    n_factor = 6.0 if h["trainable"] >= 0.5 * h["total"] else 4.0
    dense = n_factor * h["total"] * h["tokens_per_s"]
    achieved = dense + h["attn_flops_per_token"] * h["tokens_per_s"]
    mfu = {d: achieved / p for d, p in peaks.items()}
    mfu_dense = {d: dense / p for d, p in peaks.items()}

    def measured(d: str) -> str:
        return f"{mfu[d]:.1%} ({n_factor:.0f}N only: {mfu_dense[d]:.1%})"

    body = (
        "### Model FLOPs utilisation\n\n"
        f"`python -m benchmarks.throughput` (same run as the throughput section) — {setting}\n"
        f"Machine: {device}\n\n"
        f"Achieved: {n_factor:.0f}N x {h['tokens_per_s']:.0f} tokens/s = {dense / 1e9:.1f} "
        f"GFLOP/s (N = {h['total']:,} parameters), plus the causal attention's "
        f"{h['attn_flops_per_token'] / 1e6:.0f} MFLOP per token (6 L d T, mean over the "
        f"training rows; forward and backward) = {achieved / 1e9:.1f} GFLOP/s. PaLM's, "
        "nanoGPT's and torchtitan's MFU count all T x T attention scores (12 L d T), twice "
        "what is counted here.\n\n"
        + table(["matmul peak (square, 256-4096, best of before and after training)",
                 "GFLOP/s", "MFU", f"MFU, {n_factor:.0f}N only"],
                [[d, f"{p / 1e9:.1f}", *((f"{mfu[d]:.1%}", f"{mfu_dense[d]:.1%}")
                                         if d == dtype else ("-", "-"))]
                 for d, p in peaks.items()])
        + "\n\n"
        + table(["target", "measured", "verdict"], [
            [f"MFU >= {MFU_TARGET:.0%} of the bf16 matmul peak (bf16 LoRA)",
             measured("bfloat16") if dtype == "bfloat16" else
             f"not measurable here: trained in {dtype} (bf16 matmul: "
             f"{peaks['bfloat16'] / 1e9:.1f} GFLOP/s)",
             _verdict(mfu["bfloat16"] >= MFU_TARGET) if dtype == "bfloat16" else "MISSED"],
            [f"MFU >= {MFU_TARGET:.0%} of the training dtype's matmul peak",
             measured(dtype), _verdict(mfu[dtype] >= MFU_TARGET)],
        ])
        + "\n\nThe harness trains in bf16 only where the hardware has fast bf16 (CUDA, or a CPU "
        "with AVX-512-bf16/AMX); elsewhere bf16 matmuls are emulated and slower than fp32, so "
        "the harness picks fp32 and the bf16 target does not apply to such a machine as stated."
    )
    write_section("mfu", body)


if __name__ == "__main__":
    main()

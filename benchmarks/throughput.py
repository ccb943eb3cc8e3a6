"""Training throughput: the harness against its own previous loss path and a plain TRL
SFTTrainer script, in one invocation, plus model FLOPs utilisation against this machine's
matmul peak measured in the same run.

    python -m benchmarks.throughput [--model smollm2_135m] [--steps 20] [--batch 4] [--override K=V]

Sides, each in its own process, on the same model, LoRA settings, rows, batches and seed:

- `harness`: `harness.stages.train.train` with the harness's defaults: the LM head and loss
  on the supervised positions only (train.fused_loss=auto), the decoder block compiled once
  for every layer (train.compile_scope=blocks; torch.compile as auto turns it on for the
  default 400-step trial), length-grouped batches, no gradient checkpointing, and the
  attention model.attn_implementation=auto picks (eager for bf16 on CPU).
- `before`: the same with the previous path: every position's logits and the model's own
  loss (train.fused_loss=off), the whole model compiled (train.compile_scope=model).
- `harness_eager`, `before_eager`: both uncompiled (train.compile=false), the short-trial case.
- `trl_default`: what a user writes: `SFTTrainer(model, SFTConfig(...), train_dataset)` with
  TRL's defaults (random batches padded to the longest row, gradient checkpointing on), the
  model loaded with transformers' default attention (sdpa).
- `trl_same`: the plain `SFTTrainer` with the harness's SFTConfig (the whole model compiled by
  the Trainer, TRL's own loss) and none of the harness's callbacks or loss path.

Every compiled side starts from an empty kernel cache: its first 2 steps hold the cold
compile. Throughput counts useful (non-pad) training tokens per second in steady state (after
those 2 steps). Memory: one training step (forward and backward) of each loss path on the
same batch, eager, every tensor counted by torch's MemTracker (children `--memory`).
MFU = achieved training FLOP/s / the matmul peak of the training dtype timed in the same
invocation. Counted two ways: as before, 4N per token with a frozen base (6N for full
fine-tuning) plus causal attention (6 L d T per token for a row of T tokens, L layers, d query
width; PaLM, nanoGPT and torchtitan count all T x T scores: 12 L d T); and on the FLOPs the
step needs: the LM head's only for the supervised tokens. Writes the sections `throughput`,
`compile` and `mfu` of BENCHMARKS.md.
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

SIDES = ("harness", "harness_warm", "before", "harness_eager", "before_eager", "trl_default",
         "trl_same")
HARNESS_SIDES = ("harness", "harness_warm", "before", "harness_eager", "before_eager")
BEFORE = ["train.fused_loss=off", "train.compile_scope=model"]  # the path until 2026-12-07
SIDE_OVERRIDES = {
    "before": BEFORE,
    "harness_eager": ["train.compile=false"],
    "before_eager": [*BEFORE, "train.compile=false"],
    # a user's script loads the model with transformers' default attention
    "trl_default": ["model.attn_implementation=sdpa"],
}
COMPILED = ("harness", "harness_warm", "before", "trl_same")
SPEEDUP_TARGET, BEFORE_TARGET, MEMORY_TARGET, COLD_TARGET = 4.0, 1.25, 0.8, 0.5
MFU_TARGET = 0.45
DEFAULT_STEPS = 400  # train.max_steps of the default trial


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
        if cfg.train.compile:  # the Trainer's own whole-model compile (read when it is built)
            args.torch_compile, args.torch_compile_backend = True, "inductor"
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


def supervised_share(cfg, model, tok, splits) -> float:
    """Share of the training tokens that carry a label, as TRL tokenises the rows."""
    from harness.stages.train import _datasets, build_trainer, sft_config

    train_ds, _ = _datasets(splits, cfg, tok.chat_template is not None)
    args = sft_config(cfg, Path(tempfile.mkdtemp()) / "ckpt", False, model.dtype)
    data = build_trainer(model, tok, args, train_ds, None, cfg.train).train_dataset
    labelled = sum(sum(label != -100 for label in row) for row in data["labels"])
    return labelled / sum(len(ids) for ids in data["input_ids"])


def step_memory(model_name: str, batch: int, before: bool, overrides: list[str] | tuple = ()) -> dict:
    """Peak bytes of one training step (forward and backward, no optimizer) of a loss path on
    the first training batch, every tensor counted (MemTracker), eager."""
    import torch
    from torch.distributed._tools.mem_tracker import MemTracker

    from harness.stages.train import _datasets, build_trainer, sft_config

    extra = [*BEFORE, "train.compile=false"] if before else ["train.compile=false"]
    cfg, model, tok, splits, tmp, *_ = _setup(model_name, 1, batch, [*extra, *overrides])
    train_ds, _ = _datasets(splits, cfg, tok.chat_template is not None)
    args = sft_config(cfg, tmp / "ckpt", False, model.dtype)
    trainer = build_trainer(model, tok, args, train_ds, None, cfg.train)
    batch_in = next(iter(trainer.get_train_dataloader()))
    items = torch.tensor(int((batch_in["labels"][..., 1:] != -100).sum()))
    class Tracker(MemTracker):
        # MemTracker hooks every parameter's gradient, which a frozen base weight refuses;
        # gradients are counted all the same, as the tensors they are.
        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    tracker = Tracker()
    tracker.track_external(model)
    # eager throughout: a dispatch mode cannot run inside compiled code (the CPU loss kernel
    # is a compiled function: eager it holds more, so this bounds it from above)
    with torch.compiler.set_stance("force_eager"), tracker:
        loss = trainer.compute_loss(model, dict(batch_in), num_items_in_batch=items)
        loss.backward()
    per_device = next(iter(tracker.get_tracker_snapshot("peak").values()))
    params = sum(v for k, v in per_device.items() if str(k).endswith("PARAM"))
    return {"peak_bytes": int(per_device["Total"]), "param_bytes": int(params),
            "tokens": int(batch_in["input_ids"].numel())}


def measure(model_name: str, side: str, steps: int, batch: int,
            overrides: list[str] | tuple = ()) -> dict:
    from harness.stages.train import train

    overrides = [*SIDE_OVERRIDES.get(side, []), *overrides]
    cfg, model, tok, splits, tmp, trainable, total = _setup(model_name, steps, batch, overrides)
    attn = attention_flops_per_token(model, tok, splits.train, cfg.model.max_length)
    share = supervised_share(cfg, model, tok, splits)
    start = time.perf_counter()
    if side in HARNESS_SIDES:
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
            "supervised_share": share, "head_params": _head_params(model),
            "step_s": _step_seconds(history), "dtype": dtype.removeprefix("torch.")}


def _head_params(model) -> int:
    head = model.get_output_embeddings()
    return int(head.weight.numel()) if head is not None else 0


def _step_seconds(history: list[dict]) -> float:
    """Median seconds of a steady-state step (after the first 2)."""
    import statistics
    from itertools import pairwise

    times = [h["time_s"] for h in history if "tokens" in h and "train/loss" in h]
    gaps = [b - a for a, b in pairwise(times[2:])]
    return statistics.median(gaps) if gaps else float("nan")


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
    parser.add_argument("--memory", help=argparse.SUPPRESS)  # child process: one step's memory
    parser.add_argument("--reuse", type=Path, help="JSON lines of sides this invocation "
                        "printed before it stopped: those sides are not measured again")
    args = parser.parse_args()
    model = args.model or default_model()
    if args.memory:
        print(json.dumps(step_memory(model, args.batch, args.memory == "before", args.override)))
        return
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
    common = ["--model", model, "--steps", str(args.steps), "--batch", str(args.batch),
              *(f"--override={o}" for o in args.override)]
    res, caches = {}, {}
    reused = {}
    if args.reuse:
        lines = [json.loads(x) for x in args.reuse.read_text().splitlines() if x.startswith('{"side"')]
        reused = {r["side"]: r for r in lines}
    for side in SIDES:
        if side in reused:
            res[side] = reused[side]
            continue  # compiled sides from an empty kernel cache (a cold compile), except
        # harness_warm: the harness again, with the kernels its first run left (a sweep's
        # later trials sharing paths.cache_dir)
        caches[side] = caches["harness"] if side == "harness_warm" else tempfile.mkdtemp()
        env = {"TORCHINDUCTOR_CACHE_DIR": caches[side]} if side in COMPILED else None
        res[side] = run_json("benchmarks.throughput", ["--one", side, *common], env=env)
        print(json.dumps(res[side]))
    memory = {path: run_json("benchmarks.throughput", ["--memory", path, *common])
              for path in ("before", "harness")}
    print(json.dumps(memory))
    dtype = res["harness"]["dtype"]
    peaks_after = _peaks(list(dict.fromkeys([dtype, "bfloat16", "float32"])))
    peaks = {d: max(peaks_after[d], peaks_before.get(d, 0.0)) for d in peaks_after}
    print(json.dumps({"matmul_peak_flops": peaks, "before": peaks_before, "after": peaks_after}))
    setting = (f"model `{model}` ({dtype}), LoRA r16 on the attention projections, batch "
               f"{args.batch}, {args.steps} steps, demo dataset (400 training rows), seed 0.")
    write_section("throughput", _throughput_section(res, memory, setting, device))
    write_section("compile", _compile_section(res, setting, device))
    write_section("mfu", _mfu_section(res, peaks, dtype, setting, device))


def _ratio(res: dict, a: str, b: str) -> float:
    return res[a]["tokens_per_s"] / res[b]["tokens_per_s"]


def _trial_seconds(side: dict) -> float:
    """A default-length trial's training seconds: the first 2 steps as measured, then steady
    steps (same rows, so the same tokens per step)."""
    return side["warmup_s"] + (DEFAULT_STEPS - 2) * side["step_s"]


def _throughput_section(res: dict, memory: dict, setting: str, device: str) -> str:
    rows = [[s, f"{r['tokens_per_s']:.0f}", f"{r['tokens']:,}", r["steps"], f"{r['train_s']:.0f}",
             f"{r['warmup_s']:.0f}", f"{_ratio(res, s, 'before'):.2f}x",
             f"{_ratio(res, s, 'trl_default'):.2f}x"] for s, r in res.items()]
    mem = {k: v["peak_bytes"] / 2**20 for k, v in memory.items()}
    mem_ratio = mem["harness"] / mem["before"]
    targets = [
        [f"compiled: harness >= {BEFORE_TARGET}x the previous path", f"{_ratio(res, 'harness', 'before'):.2f}x",
         _verdict(_ratio(res, "harness", "before") >= BEFORE_TARGET)],
        [f"compiled: harness >= {SPEEDUP_TARGET:.0f}x plain TRL with its defaults",
         f"{_ratio(res, 'harness', 'trl_default'):.2f}x",
         _verdict(_ratio(res, "harness", "trl_default") >= SPEEDUP_TARGET)],
        ["uncompiled (short trials): harness vs the previous path",
         f"{_ratio(res, 'harness_eager', 'before_eager'):.2f}x", "(stated)"],
        [f"training step peak memory <= {MEMORY_TARGET}x the previous path's",
         f"{mem['harness']:.0f} / {mem['before']:.0f} MiB = {mem_ratio:.2f}x",
         _verdict(mem_ratio <= MEMORY_TARGET)],
        ["plain TRL at the harness's settings (its own loss), compiled: harness vs it",
         f"{_ratio(res, 'harness', 'trl_same'):.2f}x", "(stated)"],
        [f"the default {DEFAULT_STEPS}-step trial, compile included (projected from these "
         "step times): harness vs the previous path",
         f"{_trial_seconds(res['before']):.0f} / {_trial_seconds(res['harness']):.0f} s = "
         f"{_trial_seconds(res['before']) / _trial_seconds(res['harness']):.2f}x", "(stated)"],
    ]
    share = res["harness"]["supervised_share"]
    return (
        "### Training throughput: harness vs its previous path and plain TRL\n\n"
        f"`python -m benchmarks.throughput` — {setting}\nMachine: {device}\n\n"
        + table(["side", "useful tokens/s", "tokens", "steps", "wall s", "first 2 steps s",
                 "vs before", "vs trl_default"], rows)
        + "\n\n"
        + table(["target", "measured", "verdict"], targets)
        + "\n\n"
        f"{share:.0%} of the training tokens carry a label (the JSON answer); the harness "
        "runs the LM head and the cross-entropy on those only (matmul and cross-entropy "
        "compiled together on CPU, Liger on CUDA), and compiles the decoder block once for all layers. `before` is the "
        "harness with `train.fused_loss=off train.compile_scope=model`, the path until "
        "2026-12-07. Every compiled side started from an empty kernel cache, so its first 2 "
        "steps hold a cold compile (left out of the steady tokens/s). Memory: one training step "
        "(forward and backward) on the same batch, eager, every tensor counted by torch's "
        f"MemTracker ({memory['harness']['param_bytes'] / 2**20:.0f} MiB of it the weights). "
        "TRL's defaults turn gradient checkpointing on (a second forward pass per step), batch "
        "rows at random padded to the longest, and load sdpa attention, whose CPU kernel runs "
        "at about a tenth of the matmul rate in bf16; `trl_same` runs TRL's own SFTTrainer "
        "and loss with the harness's SFTConfig on the harness's model (eager attention), "
        "compiled whole by the Trainer."
    )


def _compile_section(res: dict, setting: str, device: str) -> str:
    rows, payback = [], {}
    for compiled, eager in (("harness", "harness_eager"), ("harness_warm", "harness_eager"),
                            ("before", "before_eager")):
        c, e = res[compiled], res[eager]
        extra = c["warmup_s"] - 2 * e["step_s"]  # the first 2 steps beyond two eager steps
        saved = e["step_s"] - c["step_s"]
        payback[compiled] = extra / saved if saved > 0 else float("inf")
        rows.append([compiled, f"{c['warmup_s']:.0f}", f"{e['step_s']:.2f}", f"{c['step_s']:.2f}",
                     f"{payback[compiled]:.0f}"])
    cold = res["harness"]["warmup_s"] / res["before"]["warmup_s"]
    from harness.stages.train import COMPILE_MIN_STEPS

    return (
        "### When compiling pays back\n\n"
        f"`python -m benchmarks.throughput` (same run) — {setting}\nMachine: {device}\n\n"
        + table(["path", "first 2 steps s", "eager step s", "compiled step s",
                 "steps to pay back"], rows)
        + "\n\n"
        + table(["target", "measured", "verdict"], [
            [f"cold compile <= {COLD_TARGET}x the previous path's",
             f"{res['harness']['warmup_s']:.0f} / {res['before']['warmup_s']:.0f} s = {cold:.2f}x",
             _verdict(cold <= COLD_TARGET)]])
        + "\n\n`harness` and `before` compile from an empty kernel cache; `harness_warm` is the "
        "harness again with the kernels its first run left in the cache, as a sweep's later "
        "trials sharing `paths.cache_dir/torchinductor` find them. Pay-back: the first 2 "
        "steps' seconds beyond two eager steps, over the seconds a compiled step saves.\n\n"
        f"`train.compile=null` (auto) compiles runs of at least `COMPILE_MIN_STEPS` = "
        f"{COMPILE_MIN_STEPS['cpu']} optimizer steps on CPU (harness/stages/train.py), set "
        "from these pay-back points."
    )


def _mfu_section(res: dict, peaks: dict, dtype: str, setting: str, device: str) -> str:
    h = res["harness"]
    n_factor = 6.0 if h["trainable"] >= 0.5 * h["total"] else 4.0
    tps, attn = h["tokens_per_s"], h["attn_flops_per_token"]
    counted = n_factor * h["total"] * tps + attn * tps  # every position through the head
    body_params = h["total"] - h["head_params"]
    needed = (n_factor * (body_params + h["supervised_share"] * h["head_params"]) + attn) * tps
    mfu = {d: counted / p for d, p in peaks.items()}
    mfu_needed = {d: needed / p for d, p in peaks.items()}
    return (
        "### Model FLOPs utilisation\n\n"
        f"`python -m benchmarks.throughput` (same run as the throughput section) — {setting}\n"
        f"Machine: {device}\n\n"
        f"Counted as before: {n_factor:.0f}N x {tps:.0f} tokens/s (N = {h['total']:,} "
        f"parameters) plus the causal attention's {attn / 1e6:.0f} MFLOP per token (6 L d T, "
        f"mean over the training rows) = {counted / 1e9:.1f} GFLOP/s. That counts the LM head "
        f"({h['head_params']:,} parameters, tied to the embedding) at every position, which "
        "the harness no longer computes; on the FLOPs the step needs (the head only at the "
        f"{h['supervised_share']:.0%} supervised positions): {needed / 1e9:.1f} GFLOP/s. "
        "PaLM's, nanoGPT's and torchtitan's MFU count all T x T attention scores (12 L d T), "
        "twice what is counted here.\n\n"
        + table(["matmul peak (square, 256-4096, best of before and after training)",
                 "GFLOP/s", "MFU, needed FLOPs", "MFU, counted as before"],
                [[d, f"{p / 1e9:.1f}", *((f"{mfu_needed[d]:.1%}", f"{mfu[d]:.1%}")
                                         if d == dtype else ("-", "-"))]
                 for d, p in peaks.items()])
        + "\n\n"
        + table(["target", "measured", "verdict"], [
            [f"MFU >= {MFU_TARGET:.0%} of the training dtype's matmul peak (needed FLOPs)",
             f"{mfu_needed[dtype]:.1%}", _verdict(mfu_needed[dtype] >= MFU_TARGET)],
        ])
        + "\n\nThe harness trains in bf16 only where the hardware has fast bf16 (CUDA, or a CPU "
        "with AVX-512-bf16/AMX); elsewhere bf16 matmuls are emulated and slower than fp32, so "
        "the harness picks fp32."
    )


if __name__ == "__main__":
    main()

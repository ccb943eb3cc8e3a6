"""Evaluation throughput: MMLU questions/s on the model still in memory (what the harness does)
against saving it and reloading it from disk for lm-eval (the usual round trip).

    python -m benchmarks.eval_speed [--model smollm2_135m] [--questions 24]

One process, one LoRA-wrapped model. `in memory`: `harness.stages.evaluate.evaluate` hands the PEFT
model object to lm-eval's HFLM. `reload`: merge the adapter, `save_pretrained` to a temporary
folder, `from_pretrained` it back (as `lm_eval --model hf --model_args pretrained=DIR` would,
minus that command's interpreter start-up, which is not counted) and run the same evaluation.
Both score the same seeded, subject-stratified MMLU subsample; the scores must agree. Writes
the section `eval-speed` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

from benchmarks.common import compose, machine, table, write_section
from benchmarks.techniques import default_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--questions", type=int, default=24)
    args = parser.parse_args()
    model_name = args.model or default_model()

    from transformers import AutoModelForCausalLM

    from harness.stages.evaluate import evaluate
    from harness.trial.run import prepare

    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    cfg = compose([f"model={model_name}", "technique=lora", "eval.tasks=[mmlu]",
                   f"eval.limit={args.questions}", f"eval.limits.mmlu={args.questions}",
                   f"paths.output_dir={tmp}", f"paths.log_dir={tmp}"])
    ready = prepare(cfg)
    model, tok = ready.model, ready.tokenizer
    dtype = model.get_base_model().dtype

    start = time.perf_counter()
    in_memory = evaluate(model, tok, cfg.eval, [], tmp / "in_memory", cfg.seed)
    in_memory_s = time.perf_counter() - start

    start = time.perf_counter()
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(tmp / "merged")
    tok.save_pretrained(tmp / "merged")
    del merged
    saved_s = time.perf_counter() - start
    reloaded = AutoModelForCausalLM.from_pretrained(tmp / "merged", dtype=dtype)
    loaded_s = time.perf_counter() - start - saved_s
    from_disk = evaluate(reloaded, tok, cfg.eval, [], tmp / "reload", cfg.seed)
    reload_s = time.perf_counter() - start

    acc_mem, acc_disk = in_memory["eval/mmlu/acc"], from_disk["eval/mmlu/acc"]
    rate_mem, rate_disk = args.questions / in_memory_s, args.questions / reload_s
    speedup = rate_mem / rate_disk
    body = (
        "### Evaluation throughput: in memory vs reload from disk\n\n"
        f"`python -m benchmarks.eval_speed` — model `{model_name}` ({str(dtype).removeprefix('torch.')}) "
        f"with a LoRA adapter, {args.questions} MMLU questions (offline, subject-stratified, "
        "0-shot, chat template), lm-eval batch size "
        f"{cfg.eval.batch_size}.\nMachine: {machine()}\n\n"
        + table(["path", "save s", "load s", "eval s", "total s", "questions/s", "MMLU acc"], [
            ["in memory (harness)", "-", "-", f"{in_memory_s:.1f}", f"{in_memory_s:.1f}",
             f"{rate_mem:.2f}", f"{acc_mem:.3f}"],
            ["save + reload", f"{saved_s:.1f}", f"{loaded_s:.1f}",
             f"{reload_s - saved_s - loaded_s:.1f}", f"{reload_s:.1f}", f"{rate_disk:.2f}",
             f"{acc_disk:.3f}"],
        ])
        + f"\n\nIn memory: {speedup:.2f}x the questions/s of the round trip, same scores "
        f"({'identical' if abs(acc_mem - acc_disk) < 1e-9 else 'DIFFERENT'}). "
        + ("The round trip's fixed cost (merge, write, read: "
           f"{saved_s + loaded_s:.1f} s here) is what the in-memory path saves; "
           if speedup >= 1 else
           "No gain at this size: the round trip's fixed cost is only "
           f"{saved_s + loaded_s:.1f} s here, the merged model skips the LoRA branch that the "
           "in-memory PEFT model computes at every forward, and the in-memory evaluation runs "
           "first and pays lm-eval's warm-up. ")
        + "The fixed cost grows with the model (7-8B parameters: ~15 GB written and read per "
        "evaluation, minutes on network storage), which is where scoring in memory pays."
    )
    write_section("eval-speed", body)


if __name__ == "__main__":
    main()

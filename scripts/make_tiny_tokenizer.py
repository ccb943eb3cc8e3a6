"""Writes harness/stages/tiny_tokenizer.json, the byte-level BPE of random test models.

Trained once on demo tickets so they encode compactly (~1.5x SmolLM2's token count); the
model stage reads the file and never imports the demo task. Rewriting it changes every
random model (their cache folder names hash the tokenizer):

    .venv/bin/python scripts/make_tiny_tokenizer.py
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from harness.stages.model import TINY_TOKENIZER
from harness.tasks import demo


def main() -> None:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    rows = demo.generate(seed=12345, n_train=300, n_val=0, n_test=0)["train"]
    corpus = [demo.INSTRUCTION] + [r["input"] + "\n" + r["output"] for r in rows]
    tok.train_from_iterator(corpus, trainer=trainer)
    Path(TINY_TOKENIZER).write_text(tok.to_str(), encoding="utf-8")
    print(f"wrote {TINY_TOKENIZER}")


if __name__ == "__main__":
    main()

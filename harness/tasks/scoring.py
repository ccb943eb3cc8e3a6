"""How the trial's own held-out answers are scored (`eval.tasks=[task]`).

    exact: the whole answer equals the reference (after stripping whitespace)
    demo:  the demo task's scorer (harness.tasks.demo.score): exact match of every field,
           mean field accuracy, valid JSON, one accuracy per field

`eval.scorer=auto` is decided by the dataset config, never by reading answers: the demo task
is scored as the demo task, every other dataset by exact match. `eval.scorer=demo` scores
data in the demo task's answer format from another source.
"""

from __future__ import annotations

SCORERS = ("auto", "demo", "exact")


def resolve(setting: str, dataset_source: str) -> str:
    """The scorer that `eval.scorer=<setting>` means for a dataset of `dataset.source`."""
    if setting not in SCORERS:
        raise ValueError(f"eval.scorer={setting!r}: choose one of {', '.join(SCORERS)}")
    if setting == "auto":
        return "demo" if dataset_source == "demo" else "exact"
    return setting


def metric_names(scorer: str) -> list[str]:
    """The per-answer metrics a scorer gives (each is averaged over the split)."""
    if scorer == "demo":
        from harness.tasks import demo

        return ["acc", "field_acc", "valid_json", *(f"{f}_acc" for f in demo.FIELDS)]
    return ["acc"]


def score(scorer: str, pred: str, ref: str) -> dict[str, float]:
    if scorer == "demo":
        from harness.tasks import demo

        scores = demo.score(pred, ref)
        fields = {f"{name}_acc": scores[name] for name in demo.FIELDS}
        # field_acc: partial credit (share of the answer's fields right), a finer-grained
        # objective than exact match, which counts one wrong field as a wrong answer.
        partial = sum(fields.values()) / len(fields)
        return {"acc": scores["exact"], "field_acc": partial, "valid_json": scores["valid_json"],
                **fields}
    return {"acc": float(pred.strip() == ref.strip())}

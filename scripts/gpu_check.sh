#!/usr/bin/env bash
# The GPU check: the first thing to run whenever a CUDA machine is available (about 5 minutes
# on one H100/H200). Writes the `gpu-check` section of BENCHMARKS.md (benchmarks/gpu_check.py)
# and copies BENCHMARKS.md and the log to $OUT when that is set.
#   bash scripts/gpu_check.sh                 # with this checkout's .venv (CUDA torch in it)
#   PYTHON=python3 bash scripts/gpu_check.sh  # another interpreter that holds CUDA torch
# A machine that cannot reach PyPI: run `bash scripts/gpu_wheels.sh` where pip works, take
# the .whl folder along; this script installs it (on top of the interpreter's torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/harness-site .whl/*.whl
  export PYTHONPATH=/tmp/harness-site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HARNESS_CACHE=${HARNESS_CACHE:-/tmp/harness-gpu-cache}
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device here'; print(torch.cuda.get_device_name(0), torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
LOG=${OUT:-/tmp}/gpu_check.log
set -o pipefail
timeout 480 "$PY" -m benchmarks.gpu_check "$@" 2>&1 | tee "$LOG"
if [ -n "${OUT:-}" ]; then cp BENCHMARKS.md "$OUT/"; fi

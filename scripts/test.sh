#!/usr/bin/env bash
# The test command: sets up .venv, then runs pytest (CPU only; gpu tests skip without CUDA).
#   bash scripts/test.sh                 # everything but gpu tests
#   bash scripts/test.sh -m "not slow"   # the fast suite (a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HARNESS_CACHE=${HARNESS_CACHE:-$PWD/outputs/cache}
if [ $# -eq 0 ]; then set -- -m "not gpu"; fi
exec .venv/bin/python -m pytest "$@"

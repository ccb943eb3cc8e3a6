#!/usr/bin/env bash
# The main job on the offline default: set up .venv, run the technique shootout sweep
# (SmolLM2-135M-Instruct on the demo ticket-triage task: full vs LoRA vs QLoRA vs DoRA,
# rank, alpha, learning rate; task accuracy against dollars), then write its report.
#   bash scripts/main.sh [extra overrides, e.g. hydra.sweeper.n_trials=8]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/harness-sweep technique_shootout "$@"
.venv/bin/harness-report outputs --sweep technique_shootout --out outputs/reports/technique_shootout
echo "report: $PWD/outputs/reports/technique_shootout/report.html"

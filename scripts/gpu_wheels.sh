#!/usr/bin/env bash
# Wheels for scripts/gpu_check.sh on a machine without PyPI (Python 3.12, x86-64, CUDA torch
# already there): the harness's dependencies that a CUDA PyTorch image lacks, at the versions
# this checkout's .venv holds, into .whl/ (git-ignored). Pure-Python ones that PyPI has only
# as sources are built into wheels here.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(trl bitsandbytes liger-kernel hydra-core omegaconf antlr4-python3-runtime optuna alembic
      sqlalchemy colorlog mako datasets dill multiprocess xxhash gguf submitit cut-cross-entropy)
mkdir -p .whl
for pkg in "${PKGS[@]}"; do
  version=$(.venv/bin/python -m pip show "$pkg" 2>/dev/null | awk '/^Version:/ {print $2}')
  spec=$pkg${version:+==$version}
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec" 2>/dev/null \
    || python3 -m pip wheel -q --no-deps -w .whl "$spec"
done
du -sh .whl

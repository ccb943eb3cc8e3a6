"""Tests and helpers for the local SLURM cluster (.ci/slurm/setup.sh)."""

"""Benchmarks: each runs the harness and its baseline side by side in one invocation and
writes its section of BENCHMARKS.md (ratios, not just absolute numbers: machines are noisy)."""

"""The harness's Optuna sweeper for Hydra: `hydra/sweeper=harness` (the default for --multirun).

    harness-sweep smoke                                   # sweeps/smoke.yaml
    harness-train --multirun hydra/sweeper=harness technique=lora,dora 'optimizer.lr=tag(log, interval(1e-5, 1e-3))'

Settings live under `hydra.sweeper` (config.py); the user guide is docs/sweeps.md.
"""

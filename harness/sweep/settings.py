"""`hydra.sweeper.*`: the sweep's settings, each default once. The Hydra plugin registers this
schema (hydra_plugins/harness_sweeper/config.py) and the engine reads it; light to import, as
Hydra loads it for every command. (No `from __future__ import annotations`: OmegaConf reads
these annotations as types.)"""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Settings:
    # null: `adhoc-<hash of the space>`, so re-running the same ad-hoc command resumes it
    study_name: str | None = None
    # Optuna storage URL; null: sqlite under ${paths.output_dir}/sweeps/<study_name>/study.db.
    # Shared use: journal:///shared/study.log (NFS-safe) or postgresql://... / mysql://...
    storage: str | None = None
    n_trials: int = 20  # total for the study (complete + pruned), not per invocation
    n_jobs: int = 1  # trials asked and launched together (one launcher batch)
    # > 0: asynchronous mode. The launcher starts this many worker jobs (SLURM jobs with
    # hydra/launcher=slurm) that each ask the shared study for a trial, run it, tell the
    # result and ask again until n_trials are done: no worker idles while a batch finishes.
    workers: int = 0
    # > 0: the device pool of one multi-GPU node (harness/sweep/pool.py). The node's GPUs
    # (CUDA_VISIBLE_DEVICES, else all) split into groups of this many; each trial runs as its own
    # process on one group (k > 1: DDP through torchrun), and a freed group takes the next trial
    # at once. With hydra/launcher=slurm: each trial job asks SLURM for this many GPUs instead.
    # 0: off, trials see every GPU and run as the launcher runs them
    devices_per_trial: int = 0
    # > 1 puts that many trials on each device group at once: small models that leave most of a
    # GPU's memory and compute idle; they share it, so each one runs slower
    trials_per_device: int = 1
    # name: tpe | nsga2 | random | grid; other keys go to the Optuna sampler as arguments
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 42})
    # name: none | median | percentile | successive_halving | hyperband | threshold |
    # learning_curve; other keys go to the pruner as arguments
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    # record metrics to optimize: [{metric: eval/task/acc, direction: maximize}, ...]
    objectives: list[Any] = field(
        default_factory=lambda: [{"metric": "eval/task/acc", "direction": "maximize"}])
    prune_metric: str = "eval/loss"  # reported at every evaluation step (train.eval_every)
    prune_direction: str = "minimize"
    params: dict[str, Any] = field(default_factory=dict)  # the search space (docs/sweeps.md)
    # parameter sets tried first, e.g. [{technique: full}, {technique: lora}]; the rest sampled
    enqueue: list[Any] = field(default_factory=list)
    # the sweep stops when more than max_failure_rate * n_trials trials fail in one invocation
    max_failure_rate: float = 0.5

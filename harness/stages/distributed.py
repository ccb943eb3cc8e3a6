"""One trial over several processes: which rank this process is, and what only rank 0 does.

A trial runs on k devices when it is started k times with the torch.distributed environment
set: by `torchrun --nproc_per_node=k -m harness.cli ...` (the sweep's device pool does this,
harness.sweep.pool), or by SLURM starting k tasks (`hydra.launcher.tasks_per_node=k`), whose
rendezvous `from_submitit()` sets from the SLURM environment (submitit's
TorchDistributedEnvironment: the first node of the job is the master, the port is fixed by
the job id). The trainer (accelerate) then runs DDP, or FSDP with `distributed.strategy=fsdp`.

Every rank trains; only rank 0 writes the record, scores the base model, evaluates, saves and
prices the trial. `train.batch_size` stays the global batch: each of the k processes takes
batch_size / k rows per step, so a trial computes the same thing on 1 device or on k, and
its config hash does not depend on how many devices ran it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from omegaconf import DictConfig

from harness.config.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "fsdp")
# The rendezvous and every collective wait this long for the slowest rank. Rank 0 scores the
# base model (once per sweep, cached) while the others wait at the trainer's first collective;
# on a 7-8B model with full MMLU that takes far longer than torch's default 10-30 minutes.
TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def from_submitit() -> None:
    """Exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT when this process is
    one of several tasks of a submitit job (SLURM's srun, or submitit's local executor) and no
    launcher (torchrun) has set them: the first node of the job is the master, the port is
    drawn from the job id. Every task of the job sees the job's GPUs (gpus_per_node), so
    CUDA_VISIBLE_DEVICES is left as SLURM set it and LOCAL_RANK picks the device."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks <= 1:
        return
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("task %d of %d: rendezvous at %s:%d", env.rank, env.world_size, env.master_addr,
             env.master_port)


def ranks() -> Ranks:
    """This process's place in the trial, from the torch.distributed environment variables."""
    env = os.environ
    return Ranks(rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)),
                 world_size=int(env.get("WORLD_SIZE", 1)))


def from_rank_0(value):
    """Rank 0's value on every process of a distributed trial; the value itself otherwise."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def validate_distributed(cfg: DictConfig, world_size: int) -> None:
    """distributed.strategy known and possible here, and train.batch_size splitting evenly
    over the processes."""
    import torch

    strategy = cfg.distributed.strategy
    if strategy not in STRATEGIES:
        raise ConfigError(f"distributed.strategy={strategy}: unknown (known: "
                          f"{', '.join(STRATEGIES)})")
    if strategy == "fsdp" and cfg.technique.name == "qlora":
        raise ConfigError("distributed.strategy=fsdp with technique=qlora: not supported "
                          "(FSDP cannot shard bitsandbytes 4-bit weights stored as uint8); use "
                          "distributed.strategy=ddp, or technique=lora for a sharded model")
    # only where the trial runs as several processes: a sweep validates on its submit host
    if strategy == "fsdp" and world_size > 1 and not torch.cuda.is_available():
        raise ConfigError("distributed.strategy=fsdp needs GPUs: the trainer's engine "
                          "(accelerate) shards models only on accelerator devices and would "
                          "run plain DDP on CPU; use distributed.strategy=ddp (or auto) here")
    tr = cfg.train
    if world_size > 1 and tr.batch_size % world_size:
        raise ConfigError(f"train.batch_size={tr.batch_size} does not split over "
                          f"{world_size} processes: it is the global batch, each process takes "
                          f"batch_size / {world_size} rows; use a multiple of {world_size}")


def per_device_batch(batch_size: int, world_size: int) -> int:
    return batch_size // max(world_size, 1)


def trainer_args(cfg: DictConfig, world_size: int, layer_classes: list[str]) -> dict:
    """The trainer's distributed arguments: DDP is what the trainer does by itself under
    several processes; FSDP shards every decoder block (the model's `_no_split_modules`)."""
    import torch

    args: dict = {"ddp_timeout": TIMEOUT_S}
    if world_size <= 1:
        return args
    args["ddp_backend"] = "nccl" if torch.cuda.is_available() else "gloo"
    strategy = cfg.distributed.strategy
    if strategy in ("auto", "ddp"):
        # LoRA leaves most parameters frozen, and gradient checkpointing re-enters the graph:
        # both are fine for DDP without the unused-parameter search
        args["ddp_find_unused_parameters"] = False
        return args
    args["fsdp"] = True
    args["fsdp_config"] = {
        "version": 2,
        "transformer_layer_cls_to_wrap": layer_classes,
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",  # rank 0 gets whole weights to save and evaluate
        "cpu_ram_efficient_loading": False,
    }
    return args

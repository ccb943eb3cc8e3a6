"""Trials over several processes: DDP through torchrun (gloo on CPU), rank 0 alone records,
the global batch split over the processes, SLURM/submitit rendezvous, FSDP's config path
(accelerate shards only on accelerator devices, so FSDP itself cannot run here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from harness.config.errors import ConfigError
from harness.stages import cost, distributed
from harness.trial.record import config_hash
from harness.trial.run import prepare, unsharded
from tests.conftest import tiny_overrides

# Same 6 steps at a global batch of 4, in random (not length-grouped) order: the trainer's
# length grouping sizes its mega-batches by the per-process batch, so the order would differ.
TRIAL = ["train.max_steps=6", "train.eval_every=3", "train.group_by_length=false",
         "train.batch_size=4"]
# gloo all-reduces the two processes' gradients in another summation order than one process
# sums its batch: the curves agree to float32 rounding, measured < 3e-4 on the losses
TOLERANCE = 1e-3


def _run_trial(tmp_path: Path, cache: Path, nproc: int, *extra: str) -> dict:
    out = tmp_path / f"nproc{nproc}"
    args = [*tiny_overrides(out, cache), *TRIAL, *extra, f"hydra.run.dir={out / 'hydra'}"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (record,) = (out / "outputs" / "runs").glob("*/record.json")
    return json.loads(record.read_text())


def _curve(record: dict, key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in record["history"] if key in h]


@pytest.mark.slow
def test_two_process_ddp_trial_matches_one_process(tmp_path, cache_dir):
    one = _run_trial(tmp_path, cache_dir, 1)
    two = _run_trial(tmp_path, cache_dir, 2)
    assert two["status"] == one["status"] == "complete"
    assert two["config_hash"] == one["config_hash"]  # the device count is not the experiment
    assert (one["env"]["world_size"], two["env"]["world_size"]) == (1, 2)
    assert two["env"]["distributed"] == "auto" and one["env"]["distributed"] == "none"
    for key in ("train/loss", "eval/loss"):
        a, b = _curve(one, key), _curve(two, key)
        assert [s for s, _ in a] == [s for s, _ in b] and len(a) >= 2
        assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) < TOLERANCE, (a, b)
    # the same rows were trained on: the tokens every step saw, summed over both processes
    assert [h.get("tokens") for h in one["history"]] == [h.get("tokens") for h in two["history"]]
    # rank 0 alone evaluated and wrote a whole record
    for key in ("eval/task/field_acc", "eval/mmlu/acc", "cost/usd", "mem/peak_gb"):
        assert key in two["metrics"], key
    assert two["metrics"]["perf/train_tokens"] == one["metrics"]["perf/train_tokens"]


def test_the_batch_is_global_and_must_split_over_the_processes(compose_cfg, tmp_path):
    cfg = compose_cfg(["train.batch_size=6"], tmp_path)
    distributed.validate_distributed(cfg, 2)
    assert distributed.per_device_batch(6, 2) == 3 and distributed.per_device_batch(6, 1) == 6
    with pytest.raises(ConfigError, match=r"train.batch_size=6 does not split over 4"):
        distributed.validate_distributed(cfg, 4)


@pytest.mark.parametrize("overrides, match", [
    (["distributed.strategy=zero3"], r"distributed.strategy=zero3: unknown"),
    (["distributed.strategy=fsdp"], r"distributed.strategy=fsdp needs GPUs"),
])
def test_bad_strategies_name_the_setting(compose_cfg, tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        distributed.validate_distributed(compose_cfg(overrides, tmp_path), 2)


def test_fsdp_config_path_on_a_mocked_gpu(compose_cfg, tmp_path, monkeypatch):
    """What a CUDA run hands the trainer: DDP by default, FSDP2 sharding each decoder block
    with whole weights gathered for rank 0; QLoRA cannot be sharded."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose_cfg(["distributed.strategy=fsdp", "technique=full"], tmp_path)
    distributed.validate_distributed(cfg, 2)
    args = distributed.trainer_args(cfg, 2, ["LlamaDecoderLayer"])
    assert args["ddp_backend"] == "nccl" and args["fsdp"] is True
    assert args["fsdp_config"]["version"] == 2
    assert args["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert args["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    ddp = distributed.trainer_args(compose_cfg([], tmp_path), 2, ["LlamaDecoderLayer"])
    assert "fsdp" not in ddp and ddp["ddp_find_unused_parameters"] is False
    assert distributed.trainer_args(cfg, 1, []) == {"ddp_timeout": distributed.TIMEOUT_S}
    with pytest.raises(ConfigError, match="technique=qlora"):
        distributed.validate_distributed(
            compose_cfg(["distributed.strategy=fsdp", "technique=qlora"], tmp_path), 2)


def test_the_strategy_is_not_part_of_the_hash(compose_cfg, tmp_path):
    assert config_hash(compose_cfg([], tmp_path)) == \
        config_hash(compose_cfg(["distributed.strategy=ddp"], tmp_path))


def test_rank_0_evaluates_a_whole_copy_of_what_fsdp_trained(compose_cfg, tmp_path):
    """The state rank 0 gathers from the shards, loaded into a fresh unsharded model, gives
    the trained model's outputs."""
    cfg = compose_cfg(["technique=lora"], tmp_path)
    trained = prepare(cfg).model
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # as if trained: B starts at zero
    state = {k: v.detach().cpu().clone() for k, v in trained.state_dict().items()}
    whole = unsharded(cfg, state)
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(whole(input_ids=ids).logits, trained(input_ids=ids).logits)
    with pytest.raises(RuntimeError, match="Missing key"):
        unsharded(cfg, {k: v for k, v in state.items() if "lora_B" not in k})


def _broadcast_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 0's pruning decision reaches rank 1, which saw nothing itself
        results[rank] = distributed.from_rank_0("pruned at step 3" if rank == 0 else None)
    finally:
        torch.distributed.destroy_process_group()


def test_rank_0_decides_when_every_process_stops():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_broadcast_worker, args=(port, results), nprocs=2, join=True)
        assert dict(results) == {0: "pruned at step 3", 1: "pruned at step 3"}
    assert distributed.from_rank_0("alone") == "alone"  # one process: its own value


RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT")


@pytest.fixture
def no_rendezvous(monkeypatch):
    """None of the torch.distributed variables set, and whatever from_submitit exports
    removed again afterwards (delenv of an unset key would not be undone)."""
    for key in RENDEZVOUS:
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)


def test_submitit_tasks_get_the_rendezvous_from_their_job(monkeypatch, no_rendezvous):
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4",
             "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    distributed.from_submitit()
    assert distributed.ranks() == distributed.Ranks(rank=3, local_rank=1, world_size=4)
    assert os.environ["MASTER_ADDR"] == "gpu07" and 20000 <= int(os.environ["MASTER_PORT"]) <= 60000
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's own wins
    distributed.from_submitit()
    assert distributed.ranks().world_size == 2


def test_a_one_task_job_stays_one_process(monkeypatch, no_rendezvous):
    for key, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "1",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_JOB_NUM_NODES": "1",
                       "SLURM_JOB_NODELIST": "n1", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    distributed.from_submitit()
    assert "WORLD_SIZE" not in os.environ and not distributed.ranks().distributed


def test_cost_counts_the_devices_of_the_trial_not_of_the_node(monkeypatch, compose_cfg, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # the node's, not the trial's
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    cfg = compose_cfg([], tmp_path)
    for world in (1, 2):
        metrics, env = cost.cost_metrics(cfg.cost, {"train": 3600.0}, 1000, 10, 100,
                                         {"train": 1.0}, world)
        assert env["device_count"] == world and metrics["cost/device_hours"] == world
        assert metrics["cost/usd"] == pytest.approx(world * 4.00)

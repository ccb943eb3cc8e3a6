"""Cost stage: which price a device gets, peak memory per trial phase, memory freed between
stages."""

from __future__ import annotations

import gc

import pytest
import torch

from harness.stages import cost
from tests.test_pipeline import PIPELINE, build


@pytest.mark.parametrize(("device", "priced_as"), [
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"),
    ("Tesla T4", "T4"),
    ("NVIDIA GeForce RTX 4090", "RTX-4090"),
    ("cpu", "cpu"),
])
def test_gpu_names_get_their_own_price(compose_cfg, tmp_path, device, priced_as):
    cfg = compose_cfg([], tmp_path)
    key, usd = cost.price_per_hour(cfg.cost, device)
    assert key == priced_as and usd == cfg.cost.prices[priced_as]


def test_an_unknown_gpu_has_no_price_rather_than_a_wrong_one(compose_cfg, tmp_path):
    cfg = compose_cfg([], tmp_path)
    key, usd = cost.price_per_hour(cfg.cost, "NVIDIA A10G")
    assert key == "NVIDIA A10G" and usd != usd  # NaN: the report leaves it off the cost axis


def test_cpu_peaks_are_per_phase():
    peaks = cost.PeakMemory(interval=0.01)
    with peaks("train"):
        big = torch.ones(300 * 2**20 // 4)  # 300 MiB, touched
        big += 1
        del big
    with peaks("eval"):
        small = torch.ones(30 * 2**20 // 4)
        small += 1
        del small
    assert peaks.gb["train"] > peaks.gb["eval"] + 0.2


def test_cuda_peaks_are_reset_for_each_phase(monkeypatch):
    """Two trials in one process: the second reports its own peak, not the first's."""
    allocated = {"peak": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: allocated.update(peak=0))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: allocated["peak"])
    results = []
    for train_bytes, eval_bytes in [(8e9, 3e9), (2e9, 1e9)]:
        peaks = cost.PeakMemory()
        with peaks("train"):
            allocated["peak"] = max(allocated["peak"], train_bytes)
        with peaks("eval"):
            allocated["peak"] = max(allocated["peak"], eval_bytes)
        results.append(cost._memory_metrics(peaks.gb))
    assert results[1] == {"mem/train_peak_gb": 2.0, "mem/eval_peak_gb": 1.0, "mem/peak_gb": 2.0}
    assert results[0]["mem/peak_gb"] == 8.0


def test_the_optimizer_state_is_gone_before_evaluation(compose_cfg, tmp_path):
    from harness.stages.train import train

    cfg = compose_cfg([*PIPELINE, "technique=full", "train.max_steps=2"], tmp_path)
    model, tok, splits = build(cfg)
    train(model, tok, splits, cfg, tmp_path / "run")
    cost.free_memory()
    alive = [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)]
    assert not alive
    assert all(p.grad is None for p in model.parameters())

"""Cost stage: wall time per phase, tokens, memory, FLOPs, device-hours and dollars.

Dollars = device-hours x the $/hour of the device in `conf/cost/` (the field guides'
figures: RTX 4090 $0.50/h, A100 80GB $3.50/h). FLOPs follow Kaplan et al. 2020: a training
token costs ~6N FLOPs (forward 2N + backward 4N) for full fine-tuning; with a frozen base
the weight-gradient half of the backward pass is skipped for frozen weights, ~4N.
"""

from __future__ import annotations

import contextlib
import gc
import re
import resource
import sys
import threading
import time

import torch
from omegaconf import DictConfig

from harness.config.errors import ConfigError


class Timer:
    """Named wall-clock phases: `with timer("train"): ...` then `timer.seconds`."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def device_info(world_size: int = 1) -> tuple[str, int]:
    """(device name, devices the trial holds): on CUDA one per process of the trial (not
    every GPU the node shows: a pool trial sees only its own, a plain one uses cuda:0); "cpu"
    and 1 on CPU, where the processes share the one machine that is priced."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), max(world_size, 1)
    return "cpu", 1


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """Peak memory per phase: `with peaks("train"): ...` then `peaks.gb`. CUDA: the peak
    allocated since the phase began (the counter is reset on entry, so an earlier trial in
    the same process never shows through). CPU: this process's resident memory, sampled
    every `interval` seconds by a thread (the kernel's own peak cannot be reset)."""

    def __init__(self, interval: float = 0.05):
        self.gb: dict[str, float] = {}
        self.interval = interval

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            try:
                yield
            finally:
                self._keep(phase, torch.cuda.max_memory_allocated())
            return
        peak, done = [_rss_bytes()], threading.Event()

        def sample():
            while not done.wait(self.interval):
                peak[0] = max(peak[0], _rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            self._keep(phase, max(peak[0], _rss_bytes()))

    def _keep(self, phase: str, peak_bytes: int) -> None:
        self.gb[phase] = max(self.gb.get(phase, 0.0), peak_bytes / 1e9)


def free_memory() -> None:
    """Returns what the last stage dropped (optimizer state, gradients, a model) to the
    allocator and, on CUDA, the cached blocks to the device."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_memory_gb() -> float:
    """This process's peak so far: CUDA max allocated, else peak RSS (benchmarks that run one
    configuration per process; trials use PeakMemory)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # linux: KiB


def validate_cost(cost_cfg: DictConfig) -> None:
    """The price table holds numbers >= 0, and a device named in cost.device has a price."""
    for name, price in cost_cfg.prices.items():
        if not isinstance(price, (int, float)) or isinstance(price, bool) or price < 0:
            raise ConfigError(f"cost.prices.{name}={price!r}: a price in $/hour, >= 0")
    if cost_cfg.device is not None and _lookup(dict(cost_cfg.prices), cost_cfg.device) is None:
        raise ConfigError(f"cost.device={cost_cfg.device!r} has no price in cost.prices "
                          f"(known: {', '.join(cost_cfg.prices)}); add one with "
                          f"cost.prices.{cost_cfg.device}=<$/hour>")


def _tokens(name: str) -> set[str]:
    return set(re.findall(r"[A-Z0-9]+", name.upper()))


def _lookup(prices: dict, key: str) -> str | None:
    """The price-table key for a device: exact, else the key whose every word is a word of
    the name ("NVIDIA A100-SXM4-80GB" -> A100-80GB, "NVIDIA H100 80GB HBM3" -> H100,
    "NVIDIA L40S" -> L40S and never L4), the most specific match first."""
    if key in prices:
        return key
    words = _tokens(key)
    matches = [name for name in prices if _tokens(name) and _tokens(name) <= words]
    return max(matches, key=lambda name: (len(_tokens(name)), len(name)), default=None)


def price_per_hour(cost_cfg: DictConfig, device_name: str) -> tuple[str, float]:
    """(price-table key, $/hour) of cost.device, else of the detected device; NaN when the
    table has no price for it (validate_cost has checked a device the user named)."""
    prices = dict(cost_cfg.prices)
    key = cost_cfg.device or device_name
    found = _lookup(prices, key)
    if found is None:
        if cost_cfg.device:
            validate_cost(cost_cfg)
        return key, float("nan")
    return found, float(prices[found])


def train_flops(tokens: int, total_params: int, trainable_params: int) -> float:
    full = trainable_params >= 0.5 * total_params
    return (6.0 if full else 4.0) * total_params * tokens


def cost_metrics(cost_cfg: DictConfig, seconds: dict[str, float], train_tokens: int,
                 trainable: int, total: int, peaks: dict[str, float] | None = None,
                 world_size: int = 1) -> tuple[dict[str, float], dict]:
    """Cost, speed, memory and size metrics, plus the device facts for the record;
    `world_size` processes of a distributed trial each hold a device for the whole wall time."""
    name, count = device_info(world_size)
    priced_as, usd_per_hour = price_per_hour(cost_cfg, name)
    wall = sum(seconds.values())
    device_hours = wall / 3600 * count
    train_s = seconds.get("train", 0.0)
    flops = train_flops(train_tokens, total, trainable)
    return {
        "cost/load_s": seconds.get("load", 0.0),
        "cost/train_s": train_s,
        "cost/eval_s": seconds.get("eval", 0.0),
        "cost/wall_s": wall,
        "cost/device_hours": device_hours,
        "cost/usd_per_hour": usd_per_hour,
        "cost/usd": device_hours * usd_per_hour,
        "perf/train_tokens": float(train_tokens),
        "perf/tokens_per_s": train_tokens / train_s if train_s else 0.0,
        "perf/flops": flops,
        "perf/flops_per_s": flops / train_s if train_s else 0.0,
        **_memory_metrics(peaks),
        "params/trainable": float(trainable),
        "params/total": float(total),
        "params/trainable_share": trainable / total if total else 0.0,
    }, {"device": name, "device_count": count, "priced_as": priced_as}


def _memory_metrics(peaks: dict[str, float] | None) -> dict[str, float]:
    """mem/train_peak_gb and mem/eval_peak_gb from the trial's PeakMemory, and mem/peak_gb,
    the larger (the process's peak so far where no phases were measured)."""
    if not peaks:
        return {"mem/peak_gb": peak_memory_gb()}
    out = {f"mem/{phase}_peak_gb": gb for phase, gb in peaks.items()}
    out["mem/peak_gb"] = max(peaks.values())
    return out

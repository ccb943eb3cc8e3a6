"""The statistics behind every claim the report makes: intervals, paired tests, sample sizes.

    from analysis import stats
    stats.interval([0, 1, 1, 0.5])                     # Interval(mean, low, high, stderr, n)
    stats.paired_test({"a": 1, ...}, {"a": 0, ...})    # Paired(n, diff, low, high, p, method)
    stats.holm([0.01, 0.04, 0.3])                      # Holm-adjusted p-values
    stats.examples_needed(diff=0.02, sd=0.2)           # paired examples for 80% power

Two runs are compared example by example on the same held-out rows: binary scores (exact
match) with the exact McNemar test, partial-credit scores (mean field accuracy) with a paired
sign-flip permutation test on the mean difference (seeded, so a report is reproducible). Both
are two-sided. Several pairs from one sweep are corrected together with Holm's step-down
method, so "significant" holds for the whole table at α, not for each line alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
CONFIDENCE = 0.95
PERMUTATIONS = 9_999  # smallest reachable p ~1e-4; a 100-row pair takes ~10 ms
SEED = 0


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    stderr: float
    n: int


@dataclass(frozen=True)
class Paired:
    n: int
    diff: float  # mean of a - b over the paired examples
    low: float  # CONFIDENCE interval of the difference
    high: float
    p: float
    method: str
    sd: float  # standard deviation of the per-example differences (for sample sizes)


def is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def interval(values: Sequence[float]) -> Interval:
    """Mean and CONFIDENCE interval: Wilson's for 0/1 scores (honest at 0% and 100%, where
    mean +- 1.96 stderr collapses to a point), Student's t otherwise."""
    x = np.asarray(values, float)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    stderr = float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if is_binary(x):
        z = sps.norm.ppf(0.5 + CONFIDENCE / 2)
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return Interval(mean, max(0.0, centre - half), min(1.0, centre + half), stderr, n)
    if n < 2:
        return Interval(mean, math.nan, math.nan, stderr, n)
    half = sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * stderr
    return Interval(mean, mean - half, mean + half, stderr, n)


def normal_interval(mean: float, stderr: float) -> tuple[float, float]:
    """mean +- z stderr, for scores known only by their recorded stderr (benchmarks)."""
    z = sps.norm.ppf(0.5 + CONFIDENCE / 2)
    return mean - z * stderr, mean + z * stderr


def paired_test(a: Mapping[str, float], b: Mapping[str, float]) -> Paired:
    """a against b on the examples both have (matched by id)."""
    ids = sorted(a.keys() & b.keys())
    n = len(ids)
    if n == 0:
        return Paired(0, math.nan, math.nan, math.nan, math.nan, "none", math.nan)
    x = np.array([a[i] for i in ids], float)
    y = np.array([b[i] for i in ids], float)
    d = x - y
    diff = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        half = sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n)
    else:
        half = 0.0 if n > 1 else math.nan
    if is_binary(x) and is_binary(y):
        a_only, b_only = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        p = sps.binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
        method = "exact McNemar"
    elif not np.any(d):
        p, method = 1.0, "paired permutation"
    else:
        result = sps.permutation_test(
            (d,), np.mean, permutation_type="samples", n_resamples=PERMUTATIONS,
            alternative="two-sided", random_state=SEED, vectorized=True, axis=-1)
        p, method = float(result.pvalue), "paired permutation"
    return Paired(n, diff, diff - half, diff + half, float(p), method, sd)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, float)
    tested = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), math.nan)
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def examples_needed(diff: float, sd: float, alpha: float = ALPHA, power: float = POWER,
                    tests: int = 1) -> int | None:
    """Paired examples that would detect a true difference `diff` with `power`, at `alpha`
    shared by `tests` comparisons (Bonferroni: Holm's worst case). None when the observed
    difference is zero or unknown: no size to plan for."""
    if not (math.isfinite(diff) and math.isfinite(sd)) or diff == 0:
        return None
    z = sps.norm.ppf(1 - alpha / (2 * max(tests, 1))) + sps.norm.ppf(power)
    return max(2, math.ceil((z * sd / abs(diff)) ** 2))

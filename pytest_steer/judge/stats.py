"""Paired statistics of per-item outcomes: bootstrap intervals, exact McNemar and sign-flip tests, and the
smallest drop a split can detect."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def paired_bootstrap(
    treated: np.ndarray | list[float],
    control: np.ndarray | list[float],
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval for mean(treated - control), resampling items (pairs stay together)."""
    a = np.asarray(treated, dtype=np.float64)
    b = np.asarray(control, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired outcomes must be two non-empty vectors of one length, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_resamples, diff.size))
    means = diff[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(diff.mean()), float(low), float(high), level)


@dataclass(frozen=True)
class PairedTest:
    """A two-sided test of "before and after score the same" on paired per-item outcomes."""

    test: str  # "mcnemar" (exact, 0/1 outcomes) or "permutation" (sign flips, graded outcomes)
    p_value: float
    lost: int  # items that scored lower after
    gained: int  # items that scored higher after


def mcnemar_exact(before: np.ndarray | list[float], after: np.ndarray | list[float]) -> PairedTest:
    """Exact McNemar test on 0/1 outcomes: the discordant pairs are Binomial(lost + gained, 1/2) under no change."""
    b, a = _pairs(before, after)
    if not (np.isin(b, (0, 1)).all() and np.isin(a, (0, 1)).all()):
        raise ValueError("McNemar's test needs 0/1 outcomes")
    lost, gained = int(((b == 1) & (a == 0)).sum()), int(((b == 0) & (a == 1)).sum())
    n = lost + gained
    tail = sum(math.comb(n, k) for k in range(min(lost, gained) + 1)) / 2**n
    return PairedTest("mcnemar", min(1.0, 2.0 * tail), lost, gained)


def sign_flip_test(before: np.ndarray | list[float], after: np.ndarray | list[float], *, n_resamples: int = 20000,
                   seed: int = 0, exact_up_to: int = 16) -> PairedTest:
    """Paired permutation test on graded outcomes: under no change each difference is as likely negated.

    Every sign pattern is enumerated when at most `exact_up_to` differences are non-zero (the exact
    p-value); otherwise `n_resamples` random patterns give (hits + 1) / (n_resamples + 1).
    """
    b, a = _pairs(before, after)
    diff = a - b
    nonzero = diff[np.abs(diff) > 1e-12]
    lost, gained = int((diff < -1e-12).sum()), int((diff > 1e-12).sum())
    if nonzero.size == 0:
        return PairedTest("permutation", 1.0, 0, 0)
    observed = abs(nonzero.sum()) - 1e-9  # sums, not means: same order, no rounding between patterns
    if nonzero.size <= exact_up_to:
        k = nonzero.size
        patterns = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1) * 2 - 1
        p = float((np.abs(patterns @ nonzero) >= observed).mean())
    else:
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(n_resamples, nonzero.size))
        p = float(((np.abs(signs @ nonzero) >= observed).sum() + 1) / (n_resamples + 1))
    return PairedTest("permutation", min(1.0, p), lost, gained)


def paired_test(before: np.ndarray | list[float], after: np.ndarray | list[float], seed: int = 0) -> PairedTest:
    """McNemar on 0/1 outcomes, the sign-flip permutation test on graded ones."""
    b, a = _pairs(before, after)
    if np.isin(b, (0, 1)).all() and np.isin(a, (0, 1)).all():
        return mcnemar_exact(b, a)
    return sign_flip_test(b, a, seed=seed)


def _pairs(before: np.ndarray | list[float], after: np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray]:
    b, a = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired outcomes must be two non-empty vectors of one length, got {b.shape} and {a.shape}")
    return b, a


def fewest_discordant(alpha: float) -> int:
    """The fewest discordant pairs, all one way, with which exact McNemar reaches p < alpha."""
    k = 1
    while 2.0 * 0.5**k >= alpha:
        k += 1
    return k


@dataclass(frozen=True)
class Power:
    """The smallest drop a paired test on `n` items detects (two-sided `alpha`, `power`), and the items a drop
    of `wanted` would need."""

    n: int
    alpha: float
    power: float
    sd: float  # standard deviation of the per-item paired differences it assumes
    detectable: float
    wanted: float
    needed: int

    @property
    def blind(self) -> bool:
        """The wanted drop is below what the split can detect (a tolerance of 0 asks for no drop size)."""
        return 0 < self.wanted < self.detectable - 1e-12


def minimum_detectable(n: int, sd: float, wanted: float, *, binary: bool, alpha: float = 0.05,
                       power: float = 0.8) -> Power:
    """Normal approximation (z_{1-alpha/2} + z_power) * sd / sqrt(n), and for 0/1 outcomes never below the
    exact McNemar floor: a drop of d on n items is at most n * d discordant pairs, and fewer than
    `fewest_discordant(alpha)` can never be significant."""
    if n <= 0:
        raise ValueError(f"minimum detectable effect needs a positive number of items, got {n}")
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0) + NormalDist().inv_cdf(power)
    floor = fewest_discordant(alpha) if binary else 0
    detectable = max(floor / n, z * sd / math.sqrt(n))
    needed = 0
    if wanted > 0:
        needed = max(math.ceil(floor / wanted - 1e-9), math.ceil((z * sd / wanted) ** 2 - 1e-9), 1)
    return Power(n, alpha, power, sd, detectable, wanted, needed)


MULTIPLE = ("holm", "bh", "none")  # family-wise (Holm), false discovery rate (Benjamini-Hochberg), or no correction


def reject(p_values: list[float], alpha: float, method: str) -> list[bool]:
    """Which hypotheses a run rejects: Holm's step-down (family-wise error <= alpha), Benjamini-Hochberg's
    step-up (false discovery rate <= alpha) or each at alpha alone ('none')."""
    m = len(p_values)
    if method == "none":
        return [p < alpha for p in p_values]
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [False] * m
    if method == "holm":
        for rank, i in enumerate(order):
            if p_values[i] > alpha / (m - rank):
                break
            out[i] = True
        return out
    if method == "bh":
        last = max((rank for rank, i in enumerate(order) if p_values[i] <= alpha * (rank + 1) / m), default=-1)
        for i in order[: last + 1]:
            out[i] = True
        return out
    raise ValueError(f"unknown multiple-comparison method {method!r}: expected one of {', '.join(MULTIPLE)}")


def sure_level(alpha: float, comparisons: int, method: str) -> float:
    """A p-value below this is rejected by `method` in any run of at most `comparisons` tests, whatever the
    other p-values (alpha / m: Holm's first step, and BH's); what one case can decide before the run ends."""
    return alpha if method == "none" else alpha / max(comparisons, 1)

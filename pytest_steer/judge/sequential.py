"""Sequential testing (`--steer-sequential`): stop scoring a case's test items once its verdict is decided.

Items are scored in a fixed random order. After every block, an anytime-valid confidence sequence for each
paired mean difference the verdict reads (steered - unsteered against the threshold; steered and unsteered
against the accepted per-item outcomes, against the tolerance) says whether it is decided. A confidence
sequence covers the true mean at every sample size at once with probability >= 1 - level, so looking after
every block costs no error: a decision it makes is wrong with probability at most its level, whenever it stops.

The sequence is the hedged-capital betting one for means of bounded variables (Waudby-Smith and Ramdas,
"Estimating means of bounded random variables by betting", JRSS-B 2024): for every candidate mean m, the
capital of two bettors (one on "above m", one on "below m") with predictable bets; m leaves the set for good
once the capital reaches 1/level (Ville's inequality).

The case stops only when the gate is decided (either way) and every regression check is decided to be *no*
regression. A likely regression is never decided on a part of the items: the case goes on to every item and
the usual rule (paired test, tolerance, the run's correction) rules on all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from pytest_steer.judge.verdict import Gate, auto_tolerance
from pytest_steer.record import CaseResult

if TYPE_CHECKING:
    from pytest_steer.methods.contract import Decides
from pytest_steer.tasks.data import SEQUENTIAL_BLOCK, sequential_order

GRID = 2001  # candidate means of a [0, 1] variable, 0.0005 apart


def betting_bounds(x: np.ndarray, level: float, grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Running lower and upper bounds of the mean of `x` (values in [0, 1]) after each observation: an
    anytime-valid confidence sequence at miscoverage `level` (running intersection of the hedged-capital sets)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all((x >= 0) & (x <= 1)):
        raise ValueError("betting_bounds needs a non-empty vector of values in [0, 1]")
    n = x.size
    t = np.arange(1, n + 1, dtype=np.float64)
    mean = (0.5 + np.cumsum(x)) / (t + 1)  # regularised running mean, after observation t
    var = (0.25 + np.cumsum((x - mean) ** 2)) / (t + 1)
    prev_var = np.concatenate(([0.25], var[:-1]))  # predictable: what was known before observation t
    lam = np.sqrt(2 * math.log(2 / level) / (prev_var * t * np.log(t + 1)))
    m = np.linspace(0.0, 1.0, grid)[:, None]
    with np.errstate(divide="ignore"):
        up = np.minimum(lam, 0.5 / m)  # bet that the mean is above m; never more than half the capital
        down = np.minimum(lam, 0.5 / (1 - m))
    log_up = np.cumsum(np.log1p(up * (x - m)), axis=1)
    log_down = np.cumsum(np.log1p(-down * (x - m)), axis=1)
    capital = 0.5 * np.exp(np.minimum(log_up, 700)) + 0.5 * np.exp(np.minimum(log_down, 700))
    out = np.maximum.accumulate(capital >= 1 / level, axis=1)  # once out, out for good
    inside = ~out
    candidates = m[:, 0]
    lower = np.array([candidates[inside[:, k]].min() if inside[:, k].any() else np.nan for k in range(n)])
    upper = np.array([candidates[inside[:, k]].max() if inside[:, k].any() else np.nan for k in range(n)])
    return lower, upper


@dataclass(frozen=True)
class Look:
    """What one look at the items so far decided."""

    items: int
    gate: str  # "pass", "fail" or "" (undecided)
    regression_free: bool  # every regression check is decided: no drop beyond the tolerance

    @property
    def decided(self) -> bool:
        return bool(self.gate) and self.regression_free


@dataclass(frozen=True)
class Rule:
    """The decisions a case's verdict reads, each from a confidence sequence at `level / checks`."""

    threshold: float
    tolerance: float
    level: float

    def look(self, unsteered: np.ndarray, steered: np.ndarray, accepted: dict[str, np.ndarray] | None) -> Look:
        """`accepted`: the accepted per-item outcomes of the same items ("steered", "unsteered"), None if none."""
        ends = [(low[-1], high[-1]) for low, high in self.bounds(unsteered, steered, accepted)]
        return self.decide(len(steered), ends)

    def bounds(self, unsteered: np.ndarray, steered: np.ndarray,
               accepted: dict[str, np.ndarray] | None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Running bounds after each item: of steered - unsteered, then of each score against its accepted one."""
        pairs = [(steered, unsteered)] + [(steered if name == "steered" else unsteered, before)
                                          for name, before in (accepted or {}).items()]
        level = self.level / len(pairs)  # each decision at level / checks: together at most `level`
        return [difference_series(after, before, level) for after, before in pairs]

    def decide(self, items: int, ends: list[tuple[float, float]]) -> Look:
        """The look from each sequence's current bounds (the gate's first, then the regression checks')."""
        (low, high), checks = ends[0], ends[1:]
        gate = "pass" if low >= self.threshold else "fail" if high < self.threshold else ""
        return Look(items, gate, all(low >= -self.tolerance for low, _ in checks))


def difference_series(after: np.ndarray, before: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Running bounds on mean(after - before) after each item, outcomes in [0, 1]."""
    d = (np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64) + 1) / 2
    lower, upper = betting_bounds(d, level)
    return 2 * lower - 1, 2 * upper - 1


def stop_at(rule: Rule, unsteered: np.ndarray, steered: np.ndarray, accepted: dict[str, np.ndarray] | None,
            seed: int, block: int = SEQUENTIAL_BLOCK) -> Look:
    """The look a sequential run stops at for outcomes already known (in the fixed order), or, when no look
    decides, an undecided one over every item. What `--steer-sequential` would do, without a model (a bound
    after k items depends on those k alone, so one pass over the whole order gives every look)."""
    rows = sequential_order(len(steered), seed)
    before = None if accepted is None else {name: values[rows] for name, values in accepted.items()}
    series = rule.bounds(unsteered[rows], steered[rows], before)
    for k in range(block, len(rows), block):
        look = rule.decide(k, [(low[k - 1], high[k - 1]) for low, high in series])
        if look.decided:
            return look
    return Look(len(rows), "", False)


def decides(gate: Gate, n: int, stored: CaseResult | None) -> Decides:
    """The look a sequential run of one case makes after each block: its verdict is decided on the items so far.

    `n` is the design's number of test items (an "auto" tolerance is the smallest drop `n` items detect). A gate
    on the interval's lower bound or on ICL recovery, or items the accepted result lacks, never decide early."""
    accepted = None if stored is None else {
        item: (s, u) for item, s, u in zip(stored.outcomes.items, stored.outcomes.steered, stored.outcomes.unsteered)}

    def look(items: list[str], unsteered: np.ndarray, steered: np.ndarray) -> bool:
        if gate.gate != "mean" or gate.min_recovery is not None:
            return False
        before = None
        if accepted is not None:
            if any(item not in accepted for item in items):
                return False
            before = {"steered": np.array([accepted[i][0] for i in items], dtype=np.float64),
                      "unsteered": np.array([accepted[i][1] for i in items], dtype=np.float64)}
        tolerance = gate.tolerance if gate.tolerance is not None else auto_tolerance(steered, n, gate.level)
        return Rule(gate.threshold, tolerance, gate.alpha).look(unsteered, steered, before).decided

    return look


def rule_key(gate: Gate, n: int, stored: CaseResult | None) -> str:
    """What a sequential result depends on beyond a full one's inputs: the gate, the design and the accepted outcomes."""
    inputs = (asdict(gate), n, SEQUENTIAL_BLOCK, GRID, None if stored is None else stored.outcomes.to_json())
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]

"""Tests for pytest_steer.stats (paired bootstrap) and pytest_steer.verdict (metrics, judge)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_steer.stats import Interval, paired_bootstrap

RNG = np.random.default_rng(123)
TREATED = (RNG.random(80) < 0.7).astype(float)
CONTROL = (RNG.random(80) < 0.3).astype(float)


# ---------------------------------------------------------------- paired_bootstrap


def test_estimate_is_mean_difference():
    iv = paired_bootstrap(TREATED, CONTROL)
    assert iv.estimate == pytest.approx(float(np.mean(TREATED - CONTROL)))
    assert iv.level == 0.95


def test_interval_contains_estimate_and_is_ordered():
    for level in (0.5, 0.9, 0.95, 0.99):
        iv = paired_bootstrap(TREATED, CONTROL, level=level)
        assert iv.low <= iv.estimate <= iv.high
        assert iv.low < iv.high
        assert -1.0 <= iv.low and iv.high <= 1.0


def test_wider_level_gives_wider_interval():
    narrow = paired_bootstrap(TREATED, CONTROL, level=0.5)
    wide = paired_bootstrap(TREATED, CONTROL, level=0.99)
    assert wide.low <= narrow.low and wide.high >= narrow.high


def test_deterministic_for_seed():
    a = paired_bootstrap(TREATED, CONTROL, seed=7)
    b = paired_bootstrap(list(TREATED), list(CONTROL), seed=7)
    assert a == b
    c = paired_bootstrap(TREATED, CONTROL, seed=8)
    assert c.estimate == a.estimate
    assert (c.low, c.high) != (a.low, a.high)


def test_identical_vectors_give_zero_interval():
    iv = paired_bootstrap(TREATED, TREATED)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)


def test_constant_difference_has_degenerate_interval():
    iv = paired_bootstrap([1, 1, 1, 1], [0, 0, 0, 0])
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0)


def test_pairs_stay_together():
    # Every item improves by exactly 0.5: resampling pairs can only ever give 0.5.
    a = np.array([0.5, 1.0, 0.7, 0.9])
    iv = paired_bootstrap(a, a - 0.5)
    assert iv.low == pytest.approx(0.5) and iv.high == pytest.approx(0.5)


@pytest.mark.parametrize(
    "treated, control",
    [
        ([1, 0, 1], [1, 0]),
        (np.zeros((2, 3)), np.zeros((2, 3))),
        ([], []),
    ],
)
def test_bad_shapes_raise(treated, control):
    with pytest.raises(ValueError):
        paired_bootstrap(treated, control)


def test_interval_to_dict():
    iv = Interval(0.1, 0.0, 0.2, 0.95)
    assert iv.to_dict() == {"estimate": 0.1, "low": 0.0, "high": 0.2, "level": 0.95}

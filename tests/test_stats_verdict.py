"""Tests for pytest_steer.stats (paired bootstrap) and pytest_steer.verdict (metrics, judge)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_steer.stats import Interval, paired_bootstrap
from pytest_steer.verdict import Gate, Verdict, judge, metrics_from_outcomes

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


# ---------------------------------------------------------------- metrics_from_outcomes


def test_metrics_values():
    unsteered = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0, 0], dtype=float)  # 0.2
    steered = np.array([1, 1, 1, 0, 1, 1, 0, 1, 0, 0], dtype=float)  # 0.6
    icl = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=float)  # 0.8
    m = metrics_from_outcomes(unsteered, steered, icl, seed=0)
    assert m["unsteered"] == pytest.approx(0.2)
    assert m["steered"] == pytest.approx(0.6)
    assert m["delta"] == pytest.approx(0.4)
    assert m["icl"] == pytest.approx(0.8)
    assert m["recovery"] == pytest.approx(0.75)
    assert m["n_test"] == 10
    assert m["ci_level"] == 0.95
    low, high = m["delta_ci"]
    assert low <= m["delta"] <= high
    assert m == metrics_from_outcomes(unsteered, steered, icl, seed=0)


def test_metrics_without_ceiling():
    m = metrics_from_outcomes(np.zeros(5), np.ones(5), None, seed=0)
    assert "icl" not in m and "recovery" not in m
    assert m["delta"] == 1.0


def test_recovery_none_when_icl_zero():
    m = metrics_from_outcomes(np.zeros(4), np.array([1.0, 0, 0, 0]), np.zeros(4), seed=0)
    assert m["icl"] == 0.0
    assert m["recovery"] is None


# ---------------------------------------------------------------- judge


def metrics(delta=0.3, low=0.1, high=0.5, steered=0.8, unsteered=0.5, recovery=None):
    m = {
        "unsteered": unsteered,
        "steered": steered,
        "delta": delta,
        "delta_ci": [low, high],
        "ci_level": 0.95,
        "n_test": 80,
    }
    if recovery is not None:
        m["icl"] = 0.9
        m["recovery"] = recovery
    return m


def gate(threshold=0.2, tolerance=0.05, min_recovery=None, mode="mean"):
    return Gate(threshold=threshold, tolerance=tolerance, min_recovery=min_recovery, gate=mode)


def test_passes_when_delta_at_or_above_threshold():
    v = judge(metrics(delta=0.3), gate(threshold=0.2), None, updating=False)
    assert isinstance(v, Verdict)
    assert v.passed and v.reasons == [] and v.baseline == "ok"
    assert judge(metrics(delta=0.2), gate(threshold=0.2), None, False).passed


def test_fails_below_threshold_with_reason():
    v = judge(metrics(delta=0.1, steered=0.6), gate(threshold=0.2), None, False)
    assert not v.passed
    assert len(v.reasons) == 1
    assert "threshold +0.200" in v.reasons[0]
    assert "+0.100" in v.reasons[0]
    assert "improvement" in v.reasons[0]


def test_ci_low_gate_uses_lower_bound():
    m = metrics(delta=0.3, low=0.05, high=0.55)
    assert judge(m, gate(threshold=0.2, mode="mean"), None, False).passed
    v = judge(m, gate(threshold=0.2, mode="ci_low"), None, False)
    assert not v.passed
    assert "lower CI bound" in v.reasons[0]
    assert "+0.050" in v.reasons[0] and "+0.200" in v.reasons[0]
    assert judge(metrics(delta=0.3, low=0.25), gate(threshold=0.2, mode="ci_low"), None, False).passed


def test_min_recovery():
    assert judge(metrics(recovery=0.8), gate(min_recovery=0.5), None, False).passed
    v = judge(metrics(recovery=0.4), gate(min_recovery=0.5), None, False)
    assert not v.passed
    assert "recovery" in v.reasons[0] and "0.400" in v.reasons[0] and "minimum 0.500" in v.reasons[0]


def test_min_recovery_with_zero_icl():
    m = metrics()
    m["icl"], m["recovery"] = 0.0, None
    v = judge(m, gate(min_recovery=0.5), None, False)
    assert not v.passed
    assert "ICL accuracy is 0" in v.reasons[0]


def test_min_recovery_none_ignores_recovery():
    assert judge(metrics(recovery=0.01), gate(min_recovery=None), None, False).passed


def test_regression_fails():
    baseline = {"metrics": {"steered": 0.9}}
    v = judge(metrics(steered=0.8), gate(tolerance=0.05), baseline, updating=False)
    assert not v.passed
    assert v.baseline == "regressed"
    assert any("regression" in r for r in v.reasons)
    reason = next(r for r in v.reasons if "regression" in r)
    assert "0.800" in reason and "0.900" in reason and "0.050" in reason


def test_within_tolerance_passes():
    baseline = {"metrics": {"steered": 0.9}}
    v = judge(metrics(steered=0.86), gate(tolerance=0.05), baseline, False)
    assert v.passed and v.baseline == "ok"
    # exactly at the edge still passes
    assert judge(metrics(steered=0.85), gate(tolerance=0.05), baseline, False).passed
    # improvements over the baseline pass too
    assert judge(metrics(steered=0.95), gate(tolerance=0.0), baseline, False).passed


def test_updating_ignores_baseline():
    baseline = {"metrics": {"steered": 0.9}}
    v = judge(metrics(steered=0.5), gate(tolerance=0.05), baseline, updating=True)
    assert v.passed
    assert v.baseline == "updating"
    assert not any("regression" in r for r in v.reasons)


def test_updating_still_checks_threshold():
    v = judge(metrics(delta=0.0), gate(threshold=0.2), None, updating=True)
    assert not v.passed and v.baseline == "updating"


def test_all_reasons_reported():
    baseline = {"metrics": {"steered": 0.9}}
    v = judge(metrics(delta=0.05, steered=0.5, recovery=0.2), gate(threshold=0.2, min_recovery=0.5), baseline, False)
    assert not v.passed
    assert len(v.reasons) == 3
    assert v.baseline == "regressed"

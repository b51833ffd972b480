"""Tests for pytest_steer.judge.stats (paired bootstrap) and pytest_steer.judge.verdict (metrics, judge)."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_steer.judge.stats import Interval, paired_bootstrap

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


# ---------------------------------------------------------------- paired tests and power (hand-computed values)

from pytest_steer.judge.stats import fewest_discordant, mcnemar_exact, minimum_detectable, paired_test, sign_flip_test  # noqa: E402


def test_mcnemar_exact_against_hand_computed_binomial_tails():
    # 5 lost, 0 gained: 2 * (1/2)^5
    t = mcnemar_exact([1, 1, 1, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1])
    assert (t.test, t.lost, t.gained) == ("mcnemar", 5, 0) and t.p_value == pytest.approx(0.0625)
    # 3 lost, 1 gained: 2 * (C(4,0) + C(4,1)) / 2^4 = 10/16
    assert mcnemar_exact([1, 1, 1, 0], [0, 0, 0, 1]).p_value == pytest.approx(0.625)
    # 2 lost, 2 gained: capped at 1
    assert mcnemar_exact([1, 1, 0, 0], [0, 0, 1, 1]).p_value == 1.0
    # no discordant pair: no evidence of change
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0
    with pytest.raises(ValueError, match="0/1 outcomes"):
        mcnemar_exact([0.5, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="one length"):
        mcnemar_exact([1, 0], [1])


def test_sign_flip_test_exact_enumeration_against_hand_counts():
    # differences 1, 2, 3: of the 8 sign patterns only +++ and --- reach |sum| 6
    t = sign_flip_test([0, 0, 0], [1, 2, 3])
    assert (t.test, t.lost, t.gained) == ("permutation", 0, 3) and t.p_value == pytest.approx(0.25)
    # differences +1, -1: every pattern reaches |sum| >= 0
    assert sign_flip_test([0.0, 1.0], [1.0, 0.0]).p_value == 1.0
    # six equal drops: 2 of 64 patterns
    t = sign_flip_test([0.9] * 6, [0.4] * 6)
    assert t.p_value == pytest.approx(2 / 64) and t.lost == 6
    # zero differences are left out of the count of patterns
    assert sign_flip_test([0.9] * 6 + [0.3] * 4, [0.4] * 6 + [0.3] * 4).p_value == pytest.approx(2 / 64)
    assert sign_flip_test([0.2, 0.3], [0.2, 0.3]).p_value == 1.0


def test_sign_flip_test_samples_patterns_beyond_the_exact_limit():
    t = sign_flip_test([0.5] * 30, [0.1] * 30, n_resamples=5000, seed=1)
    assert t.p_value == pytest.approx(1 / 5001)  # no random pattern reaches all 30 drops
    noisy = RNG.random(40)
    t = sign_flip_test(noisy, noisy + RNG.normal(0, 0.01, 40), n_resamples=5000)
    assert 0.01 < t.p_value <= 1.0


def test_paired_test_picks_mcnemar_for_0_1_outcomes_and_permutation_for_graded():
    assert paired_test([1, 0], [0, 0]).test == "mcnemar"
    assert paired_test([0.5, 0.2], [0.1, 0.2]).test == "permutation"


def test_fewest_discordant_pairs_for_a_significant_mcnemar():
    assert fewest_discordant(0.05) == 6  # 2/2^5 = 0.0625 is not below 0.05, 2/2^6 = 0.031 is
    assert fewest_discordant(0.01) == 8


def test_minimum_detectable_effect_against_hand_computed_values():
    floor = minimum_detectable(80, 0.0, 0.05, binary=True)
    assert floor.detectable == pytest.approx(6 / 80) and floor.needed == 120 and floor.blind
    # (z_0.975 + z_0.8) = 1.959964 + 0.841621 = 2.801585; 2.801585 * 0.5 / sqrt(80) = 0.156613
    spread = minimum_detectable(80, 0.5, 0.05, binary=True)
    assert spread.detectable == pytest.approx(0.156613, abs=1e-6)
    assert spread.needed == 785  # (2.801585 * 0.5 / 0.05)^2 = 784.9
    assert not minimum_detectable(200, 0.0, 0.05, binary=True).blind  # 6/200 = 0.03
    assert minimum_detectable(80, 0.0, 0.05, binary=False).detectable == 0.0
    with pytest.raises(ValueError):
        minimum_detectable(0, 0.1, 0.05, binary=True)

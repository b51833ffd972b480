"""Metrics from per-item outcomes, and the verdict: gate, recovery and regression against the stored result."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_steer.record import CaseResult, Comparison, Metrics, Outcomes, Provenance, TaskData
from pytest_steer.judge.verdict import Gate, Verdict, judge, metrics_from_outcomes


# ---------------------------------------------------------------- metrics_from_outcomes


def test_metrics_values():
    unsteered = np.array([0, 0, 1, 0, 0, 1, 0, 0, 0, 0], dtype=float)  # 0.2
    steered = np.array([1, 1, 1, 0, 1, 1, 0, 1, 0, 0], dtype=float)  # 0.6
    icl = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=float)  # 0.8
    m = metrics_from_outcomes(unsteered, steered, icl, seed=0)
    assert m.unsteered == pytest.approx(0.2)
    assert m.steered == pytest.approx(0.6)
    assert m.delta == pytest.approx(0.4)
    assert m.icl == pytest.approx(0.8)
    assert m.recovery == pytest.approx(0.75)
    assert m.n_test == 10
    assert m.gated.ci_level == 0.95 and m.metric == "accuracy"
    low, high = m.delta_ci
    assert low <= m.delta <= high
    assert m == metrics_from_outcomes(unsteered, steered, icl, seed=0)


def test_metrics_without_ceiling():
    m = metrics_from_outcomes(np.zeros(5), np.ones(5), None, seed=0)
    assert m.icl is None and m.recovery is None
    assert "icl" not in m.to_json() and "recovery" not in m.to_json()
    assert m.delta == 1.0


def test_recovery_none_when_icl_zero():
    m = metrics_from_outcomes(np.zeros(4), np.array([1.0, 0, 0, 0]), np.zeros(4), seed=0)
    assert m.icl == 0.0
    assert m.recovery is None
    assert m.to_json()["recovery"] is None  # the key stays, as baselines have always stored it


def test_secondary_metrics_get_their_own_paired_comparison():
    base, dola = np.array([0.2, 0.4, 0.6]), np.array([0.3, 0.4, 0.9])
    m = metrics_from_outcomes(np.zeros(3), np.ones(3), None, seed=0, metric="mc1", secondary={"mc2": (base, dola)})
    assert m.metric == "mc1" and m.to_json()["metric"] == "mc1"
    assert m.secondary["mc2"].delta == pytest.approx(float((dola - base).mean()))
    assert Metrics.from_json(m.to_json()) == m


# ---------------------------------------------------------------- judge


def metrics(delta=0.3, low=0.1, high=0.5, steered=0.8, unsteered=0.5, recovery=None, icl=None):
    gated = Comparison(unsteered, steered, delta, (low, high), 0.95, 80)
    if recovery is not None and icl is None:
        icl = 0.9
    return Metrics(gated, icl=icl, recovery=recovery)


def provenance(fingerprint: str = "f" * 32, sha: str = "0" * 64, n_test: int = 80, seed: int = 0) -> Provenance:
    return Provenance(fingerprint, {}, {}, {}, TaskData("t.json", sha, 80), seed, {"test": n_test}, {})


def result(m: Metrics, p: Provenance | None = None) -> CaseResult:
    return CaseResult("m-task_vector-t", "m", "task_vector", "t", "", m, {"layer": 1}, {}, Outcomes(("q",), (0,), (1,)),
                      p or provenance(), {})


def stored(steered: float, fingerprint: str = "f" * 32, **kw) -> CaseResult:
    return result(metrics(steered=steered, **kw), provenance(fingerprint))


FP = "f" * 32


def judge_m(m: Metrics, g: Gate, s: CaseResult | None, fingerprint: str, updating: bool) -> Verdict:
    return judge(result(m, provenance(fingerprint)), g, s, updating)


def gate(threshold=0.2, tolerance=0.05, min_recovery=None, mode="mean", rule="tolerance", alpha=0.05):
    """The plain tolerance rule by default: these results carry one token outcome per item, not real pairs."""
    return Gate(threshold=threshold, tolerance=tolerance, min_recovery=min_recovery, gate=mode, rule=rule, alpha=alpha)


def test_passes_when_delta_at_or_above_threshold():
    v = judge_m(metrics(delta=0.3), gate(threshold=0.2), None, FP, updating=False)
    assert isinstance(v, Verdict)
    assert v.passed and v.reasons == () and v.baseline == "new"
    assert judge_m(metrics(delta=0.2), gate(threshold=0.2), None, FP, False).passed


def test_fails_below_threshold_with_reason():
    v = judge_m(metrics(delta=0.1, steered=0.6), gate(threshold=0.2), None, FP, False)
    assert not v.passed
    assert len(v.reasons) == 1
    assert "threshold +0.200" in v.reasons[0]
    assert "+0.100" in v.reasons[0]
    assert "improvement" in v.reasons[0]


def test_ci_low_gate_uses_lower_bound():
    m = metrics(delta=0.3, low=0.05, high=0.55)
    assert judge_m(m, gate(threshold=0.2, mode="mean"), None, FP, False).passed
    v = judge_m(m, gate(threshold=0.2, mode="ci_low"), None, FP, False)
    assert not v.passed
    assert "lower CI bound" in v.reasons[0]
    assert "+0.050" in v.reasons[0] and "+0.200" in v.reasons[0]
    assert judge_m(metrics(delta=0.3, low=0.25), gate(threshold=0.2, mode="ci_low"), None, FP, False).passed


def test_min_recovery():
    assert judge_m(metrics(recovery=0.8), gate(min_recovery=0.5), None, FP, False).passed
    v = judge_m(metrics(recovery=0.4), gate(min_recovery=0.5), None, FP, False)
    assert not v.passed
    assert "recovery" in v.reasons[0] and "0.400" in v.reasons[0] and "minimum 0.500" in v.reasons[0]


def test_min_recovery_with_zero_icl():
    m = metrics(icl=0.0)
    v = judge_m(m, gate(min_recovery=0.5), None, FP, False)
    assert not v.passed
    assert "ICL accuracy is 0" in v.reasons[0]


def test_min_recovery_none_ignores_recovery():
    assert judge_m(metrics(recovery=0.01), gate(min_recovery=None), None, FP, False).passed


def test_regression_fails():
    baseline = stored(0.9)
    v = judge_m(metrics(steered=0.8), gate(tolerance=0.05), baseline, FP, updating=False)
    assert not v.passed
    assert v.baseline == "regressed"
    assert any("regression" in r for r in v.reasons)
    reason = next(r for r in v.reasons if "regression" in r)
    assert "0.800" in reason and "0.900" in reason and "0.050" in reason


def test_within_tolerance_passes():
    baseline = stored(0.9)
    v = judge_m(metrics(steered=0.86), gate(tolerance=0.05), baseline, FP, False)
    assert v.passed and v.baseline == "ok" and v.stored_steered == 0.9 and not v.model_changed
    # exactly at the edge still passes
    assert judge_m(metrics(steered=0.85), gate(tolerance=0.05), baseline, FP, False).passed
    # improvements over the baseline pass too
    assert judge_m(metrics(steered=0.95), gate(tolerance=0.0), baseline, FP, False).passed


def test_updating_ignores_baseline():
    baseline = stored(0.9)
    v = judge_m(metrics(steered=0.5), gate(tolerance=0.05), baseline, FP, updating=True)
    assert v.passed
    assert v.baseline == "updating"
    assert not any("regression" in r for r in v.reasons)


def test_updating_still_checks_threshold():
    v = judge_m(metrics(delta=0.0), gate(threshold=0.2), None, FP, updating=True)
    assert not v.passed and v.baseline == "updating"


def test_all_reasons_reported():
    baseline = stored(0.9)
    v = judge_m(metrics(delta=0.05, steered=0.5, recovery=0.2), gate(threshold=0.2, min_recovery=0.5), baseline, FP, False)
    assert not v.passed
    assert len(v.reasons) == 3
    assert v.baseline == "regressed"


def test_a_different_model_never_passes_and_is_named():
    v = judge_m(metrics(steered=0.9), gate(), stored(0.9, fingerprint="a" * 32), FP, False)
    assert v.model_changed and v.stored_fingerprint == "a" * 32
    assert not v.passed and v.baseline == "mismatch"
    assert f"model changed: {'a' * 32} -> {FP}" in v.reasons[0]


@pytest.mark.parametrize("changed, fragment", [
    ({"sha": "1" * 64}, "task data changed: 000000000000 -> 111111111111 (t.json)"),
    ({"n_test": 40}, "split changed: stored test=80, seed=0, this run test=40, seed=0"),
    ({"seed": 3}, "split changed: stored test=80, seed=0, this run test=80, seed=3"),
])
def test_a_result_of_other_data_is_not_compared_with_the_stored_one(changed, fragment):
    v = judge(result(metrics(steered=0.9), provenance(**changed)), gate(), stored(0.9), False)
    assert not v.passed and v.baseline == "mismatch" and fragment in v.reasons[0] and "--steer-update" in v.reasons[0]


def test_a_collapse_of_the_unsteered_or_5_shot_score_is_a_regression():
    before = stored(0.9, unsteered=0.5, icl=0.8)
    v = judge_m(metrics(steered=0.9, unsteered=0.0, delta=0.9, icl=0.8), gate(), before, FP, False)
    assert not v.passed and v.baseline == "regressed"
    assert "regression: unsteered 0.000 is below the stored baseline 0.500" in v.reasons[0]
    v = judge_m(metrics(steered=0.9, unsteered=0.5, icl=0.1), gate(), before, FP, False)
    assert not v.passed and "regression: 5-shot 0.100 is below the stored baseline 0.800" in v.reasons[0]


def test_judging_never_changes_the_result():
    run = stored(0.5)
    before = run.to_json()
    judge(run, gate(threshold=2.0), stored(0.9), False)
    assert run.to_json() == before


# ---------------------------------------------------------------- paired regression rule


def paired_result(steered: list[int], fingerprint: str = FP, unsteered: list[int] | None = None) -> CaseResult:
    """A result whose metrics are the means of its per-item outcomes (as every real result's are)."""
    n = len(steered)
    base = unsteered if unsteered is not None else [0] * n
    m = metrics_from_outcomes(np.array(base, float), np.array(steered, float), None, seed=0)
    outcomes = Outcomes(tuple(f"q{i}" for i in range(n)), tuple(base), tuple(steered))
    p = Provenance(fingerprint, {}, {}, {}, TaskData("t.json", "0" * 64, n), 0, {"test": n}, {})
    return CaseResult("m-task_vector-t", "m", "task_vector", "t", "", m, {"layer": 3}, {"dev_accuracy": [0.1, 0.5, 0.9]},
                      outcomes, p, {})


def test_a_significant_drop_beyond_the_tolerance_is_a_regression_with_its_statistics():
    accepted = paired_result([1] * 40 + [0] * 40)  # 0.50
    now = paired_result([0] * 10 + [1] * 30 + [0] * 40)  # 10 items lost: 0.375, McNemar p = 2 / 2**10
    v = judge(now, gate(threshold=-1, rule="significant"), accepted, False)
    assert not v.passed and v.baseline == "regressed"
    steered = v.changes[0]
    assert (steered.score, steered.lost, steered.gained, steered.n, steered.test) == ("steered", 10, 0, 80, "mcnemar")
    assert steered.p_value == pytest.approx(2 / 2**10)
    assert steered.difference == pytest.approx(-0.125) and steered.interval[0] < -0.125 < steered.interval[1] < 0
    assert "significant at alpha 0.05" in v.reasons[0] and "McNemar p=0.002, 10 lost / 0 gained of 80" in v.reasons[0]


def test_a_drop_within_noise_is_reported_not_failed():
    accepted = paired_result([1] * 40 + [0] * 40)
    now = paired_result([0] * 9 + [1] * 31 + [1] * 3 + [0] * 37)  # 9 lost, 3 gained: -0.075, p = 0.146
    v = judge(now, gate(threshold=-1, rule="significant"), accepted, False)
    assert v.passed and v.baseline == "ok"
    assert v.changes[0].beyond_tolerance and not v.changes[0].regression
    assert v.changes[0].p_value == pytest.approx(0.146, abs=1e-3)
    assert "within noise (p=0.15, not significant at alpha 0.05)" in v.notes[0]
    # the plain tolerance rule stays available and fails the same drop
    v = judge(now, gate(threshold=-1, rule="tolerance"), accepted, False)
    assert not v.passed and v.baseline == "regressed" and not v.notes
    # and a looser alpha makes it significant
    assert not judge(now, gate(threshold=-1, rule="significant", alpha=0.2), accepted, False).passed


def test_a_candidate_model_is_judged_by_the_paired_comparison_not_by_its_fingerprint():
    accepted = paired_result([1] * 40 + [0] * 40, fingerprint="a" * 32)
    same_scores = paired_result([1] * 40 + [0] * 40)
    v = judge(same_scores, gate(threshold=-1, rule="significant"), accepted, False, candidate=True)
    assert v.passed and v.model_changed and v.baseline == "ok"
    assert v.drift is not None and v.drift.moved == () and v.drift.correlation == 1.0
    # outside a candidate run the same change is a mismatch, and the comparison is still shown
    v = judge(same_scores, gate(threshold=-1, rule="significant"), accepted, False)
    assert not v.passed and v.baseline == "mismatch" and v.changes[0].lost == 0


def test_power_is_the_exact_floor_when_nothing_changed_and_grows_with_the_spread():
    accepted = paired_result([1] * 40 + [0] * 40)
    v = judge(accepted, gate(threshold=-1, rule="significant"), accepted, False)
    assert v.power.n == 80 and v.power.sd == 0 and v.power.detectable == pytest.approx(6 / 80)
    assert v.power.blind and v.power.needed == 120  # 0.05 of 80 items is 4 discordant pairs: never significant
    flipped = paired_result([0] * 20 + [1] * 20 + [1] * 20 + [0] * 20)  # 20 lost, 20 gained
    v = judge(flipped, gate(threshold=-1, rule="significant"), accepted, False)
    assert v.power.sd > 0.7 and v.power.detectable > 0.2


def test_verdict_round_trips_through_json():
    accepted = paired_result([1] * 40 + [0] * 40, fingerprint="a" * 32)
    now = paired_result([0] * 10 + [1] * 30 + [0] * 40)
    v = judge(now, gate(threshold=-1, rule="significant"), accepted, False, candidate=True)
    assert Verdict.from_json(v.to_json()) == v

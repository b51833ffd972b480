"""Metrics from per-item outcomes, and the verdict: gate, recovery and regression against the stored result."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_steer.record import CaseResult, Comparison, Metrics, Outcomes, Provenance, TaskData
from pytest_steer.verdict import Gate, Verdict, judge, metrics_from_outcomes


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


def gate(threshold=0.2, tolerance=0.05, min_recovery=None, mode="mean"):
    return Gate(threshold=threshold, tolerance=tolerance, min_recovery=min_recovery, gate=mode)


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

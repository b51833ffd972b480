"""The run's correction for multiple comparisons: Holm and Benjamini-Hochberg against their definitions, what a
case decides alone, late regressions written into the reports, and the 'auto' tolerance."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import numpy as np
import pytest

from pytest_steer.judge.multiple import correct
from pytest_steer.record import CaseResult, Comparison, Metrics, Outcomes, Provenance, TaskData
from pytest_steer.report.cases import CaseReport
from pytest_steer.judge.stats import fewest_discordant, reject, sure_level
from pytest_steer.judge.verdict import Gate, case_tolerance, comparisons, judge, resolve_tolerance


def _holm_by_definition(p: list[float], alpha: float) -> list[bool]:
    """Holm: H_(i) is rejected iff every p_(j), j <= i, is <= alpha / (m - j + 1)."""
    m, order = len(p), sorted(range(len(p)), key=lambda i: p[i])
    out = [False] * m
    for rank, i in enumerate(order):
        out[i] = all(p[order[j]] <= alpha / (m - j) for j in range(rank + 1))
    return out


def _bh_by_definition(p: list[float], alpha: float) -> list[bool]:
    """BH: with k the largest rank whose p_(k) <= k alpha / m, reject every p <= p_(k)."""
    m = len(p)
    ranked = sorted(p)
    ks = [k for k in range(1, m + 1) if ranked[k - 1] <= k * alpha / m]
    return [False] * m if not ks else [x <= ranked[max(ks) - 1] for x in p]


def test_reject_on_hand_made_p_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    assert reject(p, 0.05, "none") == [True, True, True, True]
    # Holm: 0.005 <= 0.0125, 0.01 <= 0.0167, 0.03 > 0.025: stop
    assert reject(p, 0.05, "holm") == [True, False, False, True]
    # BH: 0.04 <= 4 * 0.05 / 4: all four
    assert reject(p, 0.05, "bh") == [True, True, True, True]
    assert reject([], 0.05, "holm") == [] and reject([0.5], 0.05, "bh") == [False]
    with pytest.raises(ValueError, match="unknown multiple-comparison method 'sidak'"):
        reject(p, 0.05, "sidak")


def test_reject_matches_the_definitions_on_random_families() -> None:
    rng = random.Random(3)
    for _ in range(500):
        m = rng.randint(1, 30)
        p = [rng.choice([rng.random(), rng.random() * 0.01, 2 * 0.5 ** rng.randint(1, 14)]) for _ in range(m)]
        alpha = rng.choice([0.01, 0.05, 0.1])
        assert reject(p, alpha, "holm") == _holm_by_definition(p, alpha)
        assert reject(p, alpha, "bh") == _bh_by_definition(p, alpha)
        holm, bh = reject(p, alpha, "holm"), reject(p, alpha, "bh")
        assert all(b or not h for h, b in zip(holm, bh))  # BH rejects at least what Holm does


def test_what_a_case_decides_alone_no_other_p_value_changes() -> None:
    rng = random.Random(5)
    for method, m in itertools.product(("holm", "bh"), (1, 2, 7, 40)):
        level = sure_level(0.05, m, method)
        assert level == pytest.approx(0.05 / m)
        for _ in range(100):
            others = [rng.random() ** 3 for _ in range(m - 1)]
            assert reject([level * rng.random()] + others, 0.05, method)[0]  # below the level: always rejected
            assert not reject([0.05 + 0.9 * rng.random()] + others, 0.05, method)[0]  # above alpha: never
    assert sure_level(0.05, 40, "none") == 0.05


def test_comparisons_and_case_tolerance() -> None:
    assert comparisons(0) == 1 and comparisons(48) == 144
    assert case_tolerance(None, 0.05) == 0.05 and case_tolerance(None, None) is None
    assert case_tolerance("auto", 0.05) is None and case_tolerance(0.1, None) == 0.1


def _result(steered: list[float], fingerprint: str = "f" * 32) -> CaseResult:
    n = len(steered)
    base = [0.0] * n
    m = Metrics(Comparison(0.0, float(np.mean(steered)), float(np.mean(steered)), (0.0, 1.0), 0.95, n), "accuracy",
                None, None, {})
    p = Provenance(fingerprint, {}, {}, {}, TaskData("t.json", "0" * 64, n), 0, {"test": n}, {})
    return CaseResult("m-task_vector-t", "m", "task_vector", "t", "", m, {"layer": 3}, {}, Outcomes(
        tuple(f"q{i}" for i in range(n)), tuple(base), tuple(steered)), p, {})


def _gate(m: int, tolerance: float | None = 0.05, multiple: str = "holm") -> Gate:
    return Gate(threshold=-1, tolerance=tolerance, min_recovery=None, gate="mean", rule="significant", alpha=0.05,
                multiple=multiple, comparisons=m)


ACCEPTED = [1.0] * 60 + [0.0] * 40


def _dropped(lost: int) -> list[float]:
    return [0.0] * lost + [1.0] * (60 - lost) + [0.0] * 40


def test_a_case_fails_alone_below_its_level_and_waits_between_it_and_alpha() -> None:
    accepted = _result(ACCEPTED)
    # 12 items lost, none gained: McNemar p = 2 / 2**12 = 0.00049 <= 0.05 / 60
    v = judge(_result(_dropped(12)), _gate(60), accepted, False)
    assert not v.passed and v.baseline == "regressed" and not v.pending
    assert "significant at 0.00083 (alpha 0.05 / 60 comparisons, holm)" in v.reasons[0]
    # 7 lost: p = 2 / 2**7 = 0.0156, between 0.05 / 60 and 0.05: the run decides
    v = judge(_result(_dropped(7)), _gate(60), accepted, False)
    assert v.passed and v.pending and v.changes[0].pending and not v.changes[0].regression
    assert "the run's holm correction over its comparisons rules on it" in v.notes[0]
    # without a correction, the same drop fails at once
    v = judge(_result(_dropped(7)), _gate(60, multiple="none"), accepted, False)
    assert not v.passed and not v.pending


def _report(case: str, steered: list[float], m: int) -> CaseReport:
    accepted = _result(ACCEPTED)
    v = judge(_result(steered), _gate(m), accepted, False)
    return CaseReport(case, "m", "task_vector", "t", "", "pass" if v.passed else "fail", _result(steered), v)


def test_the_run_rules_on_waiting_cases_with_every_p_value() -> None:
    alone = [_report("a", _dropped(7), 10)]  # p = 0.0156 <= 0.05 / 2 comparisons actually made: Holm rejects
    out, correction = correct(alone, "holm", 0.05)
    assert correction.comparisons == 2 and correction.late == ("a",) and correction.regressions == 1
    assert out[0].status == "fail" and not out[0].verdict.passed and out[0].verdict.baseline == "regressed"
    assert "regression after the run's holm correction over 2 comparisons" in out[0].verdict.reasons[-1]
    assert out[0].verdict.changes[0].regression and not out[0].verdict.changes[0].pending
    # in a run of many unchanged cases, the same drop is within what chance gives one of them
    many = alone + [_report(f"c{i}", ACCEPTED, 60) for i in range(19)]
    out, correction = correct(many, "holm", 0.05)
    assert correction.comparisons == 40 and correction.late == () and out[0].status == "pass"
    assert "40 paired comparison(s), Holm-corrected (family-wise alpha 0.05): 0 regression(s)" in correction.describe()
    # many cases that drop together (a model update) are what BH (false discovery rate) is for
    together = [_report(f"d{i}", _dropped(7), 60) for i in range(8)] + [_report(f"c{i}", ACCEPTED, 60)
                                                                       for i in range(2)]
    assert correct(together, "holm", 0.05)[1].late == ()
    assert correct(together, "bh", 0.05)[1].late == tuple(f"d{i}" for i in range(8))


def test_updating_mismatched_and_new_cases_are_not_in_the_family() -> None:
    r = _report("a", _dropped(7), 10)
    for status in ("updating", "mismatch", "new"):
        out, correction = correct([replace(r, verdict=replace(r.verdict, baseline=status))], "holm", 0.05)
        assert correction.comparisons == 0 and out[0].status == "pass"


def test_auto_tolerance_is_the_smallest_detectable_drop_of_the_design() -> None:
    result = _result(ACCEPTED)  # 100 items, 0/1
    for m, multiple in ((1, "none"), (1, "holm"), (144, "holm"), (144, "bh")):
        g = resolve_tolerance(_gate(m, tolerance=None, multiple=multiple), result)
        assert g.tolerance == pytest.approx(fewest_discordant(0.05 / m) / 100)
        v = judge(result, _gate(m, tolerance=None, multiple=multiple), result, False)
        assert v.auto_tolerance and v.tolerance == g.tolerance and not v.power.blind
    assert resolve_tolerance(_gate(144, tolerance=0.07), result).tolerance == 0.07
    # the design fixes it: how far a run moved does not
    moved = judge(_result(_dropped(30)), _gate(144, tolerance=None), result, False)
    assert moved.tolerance == pytest.approx(fewest_discordant(0.05 / 144) / 100) and not moved.passed
    # graded outcomes: the normal approximation with the case's own spread
    graded = _result([0.1, 0.9, 0.4, 0.6] * 25)
    g = resolve_tolerance(_gate(1, tolerance=None, multiple="none"), graded)
    assert 0 < g.tolerance < 1


def test_no_committed_default_case_is_blind_to_its_tolerance_under_the_default_options() -> None:
    """The default suite, judged as a run of it judges it (tolerance auto, Holm over every default case): every
    case can see a drop of its tolerance, so no `power:` line is printed. A committed baseline with fewer items,
    or a case file that sets a tighter tolerance, fails this."""
    from pathlib import Path

    from pytest_steer.storage.baselines import BaselineStore
    from pytest_steer.cases.casefile import Case, load_case_file
    from pytest_steer.run.options import SteerOptions

    root = Path(__file__).resolve().parents[1]
    store = BaselineStore(root / "baselines")
    cases = [c for f in sorted((root / "steering_cases").glob("steer_*.toml")) for c in load_case_file(f)
             if isinstance(c, Case) and c.options.profile == "default"]
    assert len(cases) == 58  # 48 of the study's methods, 9 CAA, 1 control vector
    defaults = {f.name: f.default for f in __import__("dataclasses").fields(SteerOptions)}
    m = comparisons(len(cases))
    for case in cases:
        stored = store.load(case.model.name, case.method, case.slot)
        assert stored is not None, case.id
        gate = Gate(threshold=-1, tolerance=case_tolerance(case.options.tolerance, None), min_recovery=None,
                    gate="mean", alpha=defaults["alpha"], multiple=defaults["multiple"], comparisons=m)
        v = judge(stored, gate, stored, False)
        assert v.auto_tolerance and v.power is not None and not v.power.blind, (case.id, v.power)
        assert v.power.detectable <= v.tolerance + 1e-12

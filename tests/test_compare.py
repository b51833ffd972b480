"""Run-to-run comparison of case reports (`--steer-compare`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_steer.judge.compare import CompareError, compare, load_saved, render
from pytest_steer.record import CaseResult, Comparison, Metrics, Outcomes, Provenance, TaskData
from pytest_steer.report.cases import CaseReport


def _report(cid: str, steered: tuple[int, ...], status: str = "pass", items: tuple[str, ...] | None = None) -> CaseReport:
    n = len(steered)
    score = sum(steered) / n
    metrics = Metrics(Comparison(0.0, score, score, (score - 0.1, score + 0.1), 0.95, n))
    outcomes = Outcomes(items or tuple(f"q{i}" for i in range(n)), (0,) * n, steered)
    provenance = Provenance("f" * 32, {}, {}, {}, TaskData("t.json", "0" * 64, n), 0, {"test": n}, {})
    task = cid.rsplit("-", 1)[-1]  # ids are m-task_vector-<task>
    result = CaseResult(cid, "m", "task_vector", task, "", metrics, {"layer": 1}, {}, outcomes, provenance, {})
    return CaseReport(cid, "m", "task_vector", task, "", status, result)


def test_unchanged_cases_are_not_listed_and_unselected_ones_are_not_changes() -> None:
    same = _report("m-task_vector-a", (1, 0, 1, 1))
    saved = {"m-task_vector-a": same, "m-task_vector-b": _report("m-task_vector-b", (1, 1, 1, 1))}
    assert compare([same], saved) == []
    assert "no verdict or steered score changed" in render([], Path("old.json"), 80, False)


def test_a_drop_on_the_same_items_gets_its_paired_interval() -> None:
    before = _report("m-task_vector-a", (1, 1, 1, 1, 1, 1, 1, 1))
    after = _report("m-task_vector-a", (1, 1, 0, 0, 1, 1, 0, 1), status="fail")
    (change,) = compare([after], {"m-task_vector-a": before})
    assert (change.before_status, change.after_status) == ("pass", "fail")
    assert change.drop == pytest.approx(0.375)
    estimate, low, high = change.paired
    assert estimate == pytest.approx(-0.375) and low <= estimate <= high < 0
    assert (change.test.test, change.test.lost, change.test.gained) == ("mcnemar", 3, 0)
    assert change.test.p_value == pytest.approx(0.25)  # 2 * (1/2)^3
    text = render([change], Path("old.json"), 80, False)
    assert "pass -> fail" in text and "-0.375" in text and "3 / 0" in text and "0.25" in text


def test_other_items_or_a_new_case_are_said_so() -> None:
    before = _report("m-task_vector-a", (1, 1), items=("x", "y"))
    (change,) = compare([_report("m-task_vector-a", (1, 0))], {"m-task_vector-a": before})
    assert change.paired is None and change.note == "test items differ: difference of means only"
    (new,) = compare([_report("m-task_vector-new", (1, 0))], {})
    assert new.before_status == "-" and new.note == "not in the saved run" and new.drop == 0.0


def test_a_saved_report_round_trips_and_bad_ones_are_named(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"cases": [_report("m-task_vector-a", (1, 0)).to_json()]}))
    assert load_saved(path)["m-task_vector-a"] == _report("m-task_vector-a", (1, 0))
    path.write_text(json.dumps({"cases": [{"id": "m-task_vector-a"}]}))
    with pytest.raises(CompareError, match=r"r\.json: a case is malformed"):
        load_saved(path)

"""The end-of-run tables and JSON report, from hand-made case reports."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_steer.record import CaseResult, Comparison, Metrics, Outcomes, Provenance, TaskData
from pytest_steer.report.cases import CaseReport, render_table, write_json_report
from pytest_steer.judge.verdict import Verdict


def _comparison(unsteered: float, steered: float) -> Comparison:
    d = steered - unsteered
    return Comparison(unsteered, steered, d, (d - 0.05, d + 0.05), 0.95, 98)


def _result(cid: str, method: str, task: str, variant: str, metrics: Metrics, chosen: dict) -> CaseResult:
    provenance = Provenance("f" * 32, {}, {}, {}, TaskData("t.json", "0" * 64, 98), 0, {"test": 98}, {})
    # one per test item, graded so that their means are the metrics (as a reader checks)
    outcomes = Outcomes(tuple(f"q{i}" for i in range(98)), (metrics.unsteered,) * 98, (metrics.steered,) * 98,
                        None if metrics.icl is None else (metrics.icl,) * 98,
                        {k: ((c.unsteered,) * 98, (c.steered,) * 98) for k, c in metrics.secondary.items()})
    return CaseResult(cid, "m", method, task, variant, metrics, chosen, {}, outcomes, provenance, {})


def _case(cid: str, method: str, task: str, variant: str, status: str, metrics: Metrics | None = None,
          chosen: dict | None = None) -> CaseReport:
    result = None if metrics is None else _result(cid, method, task, variant, metrics, chosen or {})
    verdict = None if metrics is None else Verdict(passed=status == "pass")
    return CaseReport(cid, "m", method, task, variant, status, result, verdict)


REPORTS = [
    _case("m-task_vector-antonym", "task_vector", "antonym", "", "pass", Metrics(_comparison(0.0, 0.5), icl=0.6, recovery=0.83),
          {"layer": 4, "relative_depth": 0.5}),
    _case("m-task_vector-antonym-deep", "task_vector", "antonym", "deep", "fail", Metrics(_comparison(0.0, 0.05), icl=0.6),
          {"layer": 7}),
    _case("m-dola-truthful-mc-upper", "dola", "truthful-mc", "upper", "xfail",
          Metrics(_comparison(0.19, 0.26), "mc1", secondary={"mc2": _comparison(0.25, 0.27), "mc3": _comparison(0.12, 0.15)}),
          {"bucket": "upper", "top_premature_layer": 9, "top_share": 0.94}),
    _case("m-dola-fact-completion-lower", "dola", "fact-completion", "lower", "pass", Metrics(_comparison(0.81, 0.65)),
          {"bucket": "lower", "top_premature_layer": 2, "top_share": 0.49}),
    _case("m-dola-fact-completion-broken", "dola", "fact-completion", "broken", "error"),
]


def _row(text: str, *parts: str) -> str:
    rows = [line for line in text.splitlines() if all(p in line for p in parts)]
    assert len(rows) == 1, (parts, text)
    return rows[0]


def test_vector_and_dola_tables() -> None:
    text = render_table(REPORTS, 80, markup=False)
    assert text.index("pytest-steer results") < text.index("DoLa results")
    assert "0.50" in _row(text, "task_vector ", "pass") and "layer=4" in _row(text, "task_vector ", "pass")
    assert "0.60" in _row(text, "task_vector ", "pass")  # the 5-shot column
    assert "layer=7" in _row(text, "task_vector (deep)")
    mc = _row(text, "truthful-mc", "upper")
    for part in ("0.19>0.26", "0.25>0.27", "0.12>0.15", "mc1 +0.07", "9 (94%)", "xfail"):
        assert part in mc, part
    fact = _row(text, "fact-completion", "lower")
    assert "0.81>0.65" in fact and "accuracy -0.16" in fact and fact.count(" - ") >= 2
    assert "error" in _row(text, "fact-completion", "broken")


def test_only_the_tables_with_reports_are_printed() -> None:
    assert "DoLa" not in render_table(REPORTS[:2], 80, markup=False)
    assert "pytest-steer results (test split)" not in render_table(REPORTS[2:], 80, markup=False)


def test_json_report_holds_counts_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"
    write_json_report(path, REPORTS, {"unused_baselines": []})
    data = json.loads(path.read_text())
    assert data["counts"] == {"pass": 2, "fail": 1, "xfail": 1, "error": 1}
    assert [c["id"] for c in data["cases"]] == [r.id for r in REPORTS]
    assert [CaseReport.from_json(c) for c in data["cases"]] == REPORTS
    assert not list(path.parent.glob("*.tmp"))


def test_the_table_shows_the_stored_baseline_and_the_change_and_missing_ones() -> None:
    from dataclasses import replace

    base = REPORTS[0]
    compared = replace(base, verdict=Verdict(passed=True, stored_steered=0.45))
    missing = replace(base, id="m-task_vector-present", task="present", status="missing", verdict=None)
    reused = replace(base, id="m-task_vector-plural", task="plural",
                     result=replace(base.result, reused=True, computed_at="2026-11-25T10:00:00+00:00"))
    text = render_table([compared, missing, reused], 80, markup=False)
    assert "baseline (change)" in text
    assert "0.45 (+0.05)" in _row(text, " antonym ")
    row = _row(text, " present ")
    assert "missing" in row and "error" not in row
    assert "reused 2026-11-25 10:00" in _row(text, " plural ") and "now" in _row(text, " antonym ")

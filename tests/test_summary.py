"""The summary section is built by the report layer from the run's facts, without pytest."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport
from pytest_steer.report.summary import RunFacts, summary
from pytest_steer.judge.verdict import Verdict

ROOT = Path(__file__).resolve().parents[1]


def _report(status: str = "pass") -> CaseReport:
    r = CaseResult.from_baseline(json.loads((ROOT / "baselines/smollm2-135m/task_vector/antonym.json").read_text()))
    return CaseReport(r.id, r.model, r.method, r.task, "", status, r, Verdict(status == "pass"))


def test_a_complete_run_names_its_tally_and_what_it_wrote(tmp_path: Path) -> None:
    lines = summary(RunFacts([_report()], verbose=False, written=[tmp_path / "b.json"], report_path=tmp_path / "r.json"))
    texts = [line.text for line in lines]
    assert texts == ["1 steering cases: 1 pass", f"baseline written: {tmp_path / 'b.json'}",
                     f"report written: {tmp_path / 'r.json'}"]
    assert all(not line.color for line in lines)


def test_an_incomplete_run_says_so_in_red(tmp_path: Path) -> None:
    lines = summary(RunFacts([_report()], verbose=False, unfinished=["a-task_vector-b"], report_path=tmp_path / "r.json"))
    red = [line.text for line in lines if line.color == "red"]
    assert red[0].startswith("1 selected case(s) unfinished") and "merge refuses it" in red[1]


def test_the_tables_come_first_when_verbose() -> None:
    lines = summary(RunFacts([_report()], verbose=True, width=200))
    assert lines[0].block and "smollm2-135m" in lines[0].text and lines[1].text == "1 steering cases: 1 pass"

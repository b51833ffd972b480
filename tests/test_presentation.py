"""Methods present themselves: the report, HTML, markdown and drift code know no method by name; a method
without a presentation of its own (any third-party one) is shown generically, never with a KeyError."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pytest_steer.judge.drift import drift
from pytest_steer.methods.presentation import DOLA, FUNCTION_VECTOR, GENERIC, TASK_VECTOR, presentation_of
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport, render_table
from pytest_steer.judge.verdict import Verdict

ROOT = Path(__file__).resolve().parents[1]


def _stored(model: str, method: str, slot: str) -> CaseResult:
    return CaseResult.from_baseline(json.loads((ROOT / "baselines" / model / method / f"{slot}.json").read_text()))


def _third_party() -> CaseResult:
    """A method with knobs no built-in has (no layer, no heads): `share` and `temperature`."""
    tv = _stored("smollm2-135m", "task_vector", "antonym")
    return replace(tv, id="smollm2-135m-every_other-antonym", method="every_other",
                   chosen={"share": 0.5, "temperature": 0.7},
                   curves={"dev_share": [0.1, 0.4, 0.3], "labels": ["a", "b", "c"]})


def test_the_built_ins_have_their_own_and_an_unknown_method_the_generic_one() -> None:
    assert presentation_of("task_vector") is TASK_VECTOR and presentation_of("function_vector") is FUNCTION_VECTOR
    assert presentation_of("dola") is DOLA
    assert presentation_of("every_other") is GENERIC  # not installed here (a report from elsewhere)


def test_a_method_with_other_knobs_gets_a_row_figures_and_drift() -> None:
    result = _third_party()
    report = CaseReport(result.id, result.model, result.method, result.task, "", "pass", result, Verdict(True))
    table = render_table([report], 260, False)  # wide enough that no column wraps
    assert "share=0.5, temperature=0.7" in table
    figures = GENERIC.figures(result, result)
    assert [f.layout.title.text for f in figures] == ["dev_share"]  # numeric curves only, the stored one beside
    assert len(figures[0].data) == 2
    moved = drift(result, replace(result, chosen={"share": 0.25, "temperature": 0.7},
                                  curves={"dev_share": [0.2, 0.5, 0.1], "labels": ["a", "b", "c"]}))
    assert moved.moved == ("share",) and moved.curve == "dev_share" and moved.correlation is not None


def test_the_html_page_of_a_third_party_case_renders(tmp_path: Path) -> None:
    from pytest_steer.report import html

    result = _third_party()
    report = CaseReport(result.id, result.model, result.method, result.task, "", "fail", result,
                        Verdict(False, ("regression",), "regressed", 0.8))
    page = html.render([report], lambda r: result)
    assert "dev_share" in page and "every_other" in page


def test_the_built_ins_drift_as_before() -> None:
    fv = _stored("smollm2-135m", "function_vector", "antonym")
    moved = drift(fv, replace(fv, chosen={**fv.chosen, "strength": fv.chosen["strength"] + 1}))
    assert moved.moved == ("strength",) and moved.curve == "dev_accuracy" and moved.heads_total
    dola = _stored("gemma3-270m", "dola", "truthful-mc-upper-normed")
    same = drift(dola, dola)
    assert same.moved == () and same.curve == "premature_share" and same.histogram_shift == 0.0


def test_no_method_name_in_the_presentation_layer() -> None:
    package = ROOT / "pytest_steer"
    modules = [*sorted((package / "report").glob("*.py")), package / "judge" / "drift.py"]
    assert len(modules) >= 8
    for module in modules:
        source = module.read_text().lower()
        for name in ("dola", "task_vector", "function_vector", "premature", "heads\"", "'layer'", "\"layer\""):
            assert name not in source, f"{module.relative_to(package)} mentions {name}"

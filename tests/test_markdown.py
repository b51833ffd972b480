"""The tables of docs/results.md are generated from the committed baselines, so their figures cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.report.markdown import load_cases, main, render

ROOT = Path(__file__).resolve().parents[1]


def test_the_results_tables_are_the_committed_baselines() -> None:
    assert main([str(ROOT / "docs" / "results.md"), "--check", "--baselines", str(ROOT / "baselines"),
                 "--cases", str(ROOT / "steering_cases")]) == 0


def test_a_stale_block_is_rewritten_and_check_fails_on_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- steer-table task_vector -->\n| old | table |\n<!-- /steer-table -->\nafter\n")
    args = [str(doc), "--baselines", str(ROOT / "baselines"), "--cases", str(ROOT / "steering_cases")]
    assert main([*args, "--check"]) == 1
    assert "generated tables differ" in capsys.readouterr().err
    assert main(args) == 0
    text = doc.read_text()
    assert "| old | table |" not in text and text.startswith("intro\n") and text.endswith("after\n")
    row = next(line for line in text.splitlines() if "smollm2-135m | english-french" in line)
    assert row == "| smollm2-135m | english-french | 0.00 | 0.04 | 0.06 | +0.04 [+0.00, +0.09] | 20 (30) | general-knowledge 0.50>0.51 (+0.01) | 0.163 (auto) | xfail (declared) |"
    assert main([*args, "--check"]) == 0


def test_an_unknown_table_is_named() -> None:
    with pytest.raises(ValueError, match="unknown table 'steering'"):
        render("<!-- steer-table steering -->\n<!-- /steer-table -->", load_cases(ROOT / "steering_cases"),
               BaselineStore(ROOT / "baselines"))

"""The HTML report: built from typed results, self-contained, and rendered by a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_steer.report import html
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport
from pytest_steer.judge.verdict import Verdict

ROOT = Path(__file__).resolve().parents[1]


def _stored(model: str, method: str, slot: str) -> CaseResult:
    return CaseResult.from_baseline(json.loads((ROOT / "baselines" / model / method / f"{slot}.json").read_text()))


def _reports() -> tuple[list[CaseReport], dict[str, CaseResult]]:
    tv = _stored("smollm2-135m", "task_vector", "antonym")
    fv = _stored("smollm2-135m", "function_vector", "antonym")
    fv = replace(fv, curves={**fv.curves, "grid_heads": [2, 8], "grid_strengths": [1.0, 2.0],
                             "grid_dev_accuracy": [[0.1, 0.2], [0.3, 0.55]]})
    dola = _stored("gemma3-270m", "dola", "truthful-mc-upper-normed")
    worse = replace(tv, id="smollm2-135m-task_vector-capitalize", task="capitalize",
                    curves={**tv.curves, "dev_accuracy": [0.0] * len(tv.curves["dev_accuracy"])},
                    reused=True, computed_at="2026-11-25T10:00:00+00:00")
    reports = [
        CaseReport(tv.id, tv.model, tv.method, tv.task, "", "pass", tv, Verdict(True)),
        CaseReport(fv.id, fv.model, fv.method, fv.task, "", "pass", fv, Verdict(True)),
        CaseReport(dola.id, dola.model, dola.method, dola.task, dola.variant, "pass", dola, Verdict(True)),
        CaseReport(worse.id, worse.model, worse.method, worse.task, "", "fail", worse,
                   Verdict(False, ("regression: steered 0.10 is below the stored baseline 0.76",), "regressed", 0.76)),
        CaseReport("smollm2-135m-task_vector-broken", "smollm2-135m", "task_vector", "broken", "", "error",
                   message="a task file that does not parse"),
    ]
    return reports, {worse.id: tv}


@pytest.fixture
def page(tmp_path: Path) -> Path:
    reports, stored = _reports()
    path = tmp_path / "report.html"
    html.write_html(path, reports, lambda r: stored.get(r.id))
    return path


def test_the_page_holds_every_picture_and_the_provenance(page: Path) -> None:
    text = page.read_text()
    assert not re.search(r'<(script|link)[^>]+(src|href)="https?:', text)  # plotly.js inline: no network to view it
    assert "Plotly" in text
    for fragment in ("task_vector: steered - unsteered", "function_vector: steered - unsteered",
                     "dola: steered - unsteered", "recovery (steered over 5-shot)", "accuracy against layer",
                     "(heads, strength) at layer 14", "premature layer chosen", "unsteered vs DoLa (gated: mc1)",
                     "dev accuracy (stored baseline)", "regression: steered 0.10 is below the stored baseline 0.76",
                     "a task file that does not parse", "reused, computed 2026-11-25T10:00:00+00:00",
                     f"transformers {_stored('smollm2-135m', 'task_vector', 'antonym').provenance.versions['transformers']}",
                     "cpu, float32"):
        assert fragment in text, fragment
    assert text.count("dev accuracy (stored baseline)") == 1  # only the failed case shows its baseline's curve
    assert text.count('<details class="case"') == 5


def test_missing_plotting_libraries_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "plotly", None)  # import plotly now raises ImportError
    with pytest.raises(html.HtmlUnavailable, match=r"needs plotly: pip install 'pytest-steer\[html\]'"):
        html.require()


def test_steer_html_without_plotly_is_a_usage_error(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "plotly", None)
    result = pytester.runpytest("--steer-html=out.html", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--steer-html: the HTML report needs plotly: pip install 'pytest-steer[html]'" in result.stderr.str()


def test_the_command_line_builds_the_page_from_a_saved_report(tmp_path: Path, capsys) -> None:
    reports, _ = _reports()
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps({"cases": [r.to_json() for r in reports]}))
    out = tmp_path / "page.html"
    assert html.main([str(saved), "-o", str(out), "--baselines", str(ROOT / "baselines")]) == 0
    assert "accuracy against layer" in out.read_text()
    (tmp_path / "bad.json").write_text("{")
    assert html.main([str(tmp_path / "bad.json"), "-o", str(out)]) == 2
    assert "bad.json: cannot read the saved report (not valid JSON" in capsys.readouterr().err


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium on this machine: the browser test needs it (.ci/run installs the system package)")


@pytest.mark.browser
def test_the_page_renders_in_a_headless_browser_without_console_errors(page: Path, tmp_path: Path) -> None:
    args = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run([*args, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []  # the page logs nothing: no errors, no warnings
    dom = done.stdout
    assert dom.count('class="heatmaplayer') >= 3  # one steerability map per method, drawn by plotly.js
    assert 'class="scatterlayer' in dom and 'class="barlayer' in dom  # a layer curve and DoLa's bars
    shot = tmp_path / "page.png"
    subprocess.run([*args, "--hide-scrollbars", "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

"""The end-of-run tables and JSON report, from hand-made records."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_steer.report import render_table, write_json_report


def _metrics(base: float, steer: float, **extra) -> dict:
    return {"unsteered": base, "steered": steer, "delta": steer - base, "delta_ci": [steer - base - 0.05, steer - base + 0.05],
            "n_test": 98, **extra}


RECORDS = [
    {"id": "m-task_vector-antonym", "model": "m", "method": "task_vector", "task": "antonym", "status": "pass",
     "metrics": _metrics(0.0, 0.5, icl=0.6), "chosen": {"layer": 4, "relative_depth": 0.5}},
    {"id": "m-task_vector-antonym-deep", "model": "m", "method": "task_vector", "task": "antonym", "variant": "deep",
     "status": "fail", "metrics": _metrics(0.0, 0.05, icl=0.6), "chosen": {"layer": 7}},
    {"id": "m-dola-truthful-mc-upper", "model": "m", "method": "dola", "task": "truthful-mc", "variant": "upper", "status": "xfail",
     "metrics": _metrics(0.19, 0.26, metric="mc1", secondary={"mc2": _metrics(0.25, 0.27), "mc3": _metrics(0.12, 0.15)}),
     "chosen": {"bucket": "upper", "top_premature_layer": 9, "top_share": 0.94}},
    {"id": "m-dola-fact-completion-lower", "model": "m", "method": "dola", "task": "fact-completion", "variant": "lower",
     "status": "pass", "metrics": _metrics(0.81, 0.65), "chosen": {"bucket": "lower", "top_premature_layer": 2, "top_share": 0.49}},
    {"id": "m-dola-fact-completion-broken", "model": "m", "method": "dola", "task": "fact-completion", "variant": "broken",
     "status": "error"},
]


def _row(text: str, *parts: str) -> str:
    rows = [line for line in text.splitlines() if all(p in line for p in parts)]
    assert len(rows) == 1, (parts, text)
    return rows[0]


def test_vector_and_dola_tables() -> None:
    text = render_table(RECORDS, 80, markup=False)
    assert text.index("pytest-steer results") < text.index("DoLa results")
    assert "0.50" in _row(text, "task_vector ", "pass") and "layer=4" in _row(text, "task_vector ", "pass")
    assert "layer=7" in _row(text, "task_vector (deep)")
    mc = _row(text, "truthful-mc", "upper")
    for part in ("0.19>0.26", "0.25>0.27", "0.12>0.15", "mc1 +0.07", "9 (94%)", "xfail"):
        assert part in mc, part
    fact = _row(text, "fact-completion", "lower")
    assert "0.81>0.65" in fact and "accuracy -0.16" in fact and fact.count(" - ") >= 2
    assert "error" in _row(text, "fact-completion", "broken")


def test_only_the_tables_with_records_are_printed() -> None:
    assert "DoLa" not in render_table(RECORDS[:2], 80, markup=False)
    assert "pytest-steer results (test split)" not in render_table(RECORDS[2:], 80, markup=False)


def test_json_report_holds_counts_and_records(tmp_path: Path) -> None:
    path = tmp_path / "out" / "report.json"
    write_json_report(path, RECORDS, {"unused_baselines": []})
    data = json.loads(path.read_text())
    assert data["counts"] == {"pass": 2, "fail": 1, "xfail": 1, "error": 1}
    assert [c["id"] for c in data["cases"]] == [r["id"] for r in RECORDS]
    assert not list(path.parent.glob("*.tmp"))

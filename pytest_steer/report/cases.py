"""What a run reports per case (`CaseReport`), the terminal tables and the JSON report file."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pytest_steer.storage.files import atomic_write_json
from pytest_steer.methods.presentation import Presentation, presentation_of, side_effect_text
from pytest_steer.record import CaseResult, Metrics
from pytest_steer.judge.verdict import Verdict

_STYLE = {"pass": "green", "xpass": "yellow", "fail": "red", "xfail": "dim", "error": "bold red", "missing": "yellow"}


@dataclass(frozen=True)
class CaseReport:
    """One case as the run saw it: its identity, outcome status, result and verdict (either may be missing)."""

    id: str
    model: str
    method: str
    task: str
    variant: str
    status: str  # pass, fail, xfail, xpass, error, missing (computed, but no stored baseline to judge against)
    result: CaseResult | None = None
    verdict: Verdict | None = None
    message: str = ""
    worker: str = "main"
    model_loads: int = 0
    device: str = ""  # where it ran, e.g. "cuda:1/bfloat16 (GPU 3)" ("" when judged from a stored result)

    def to_json(self) -> dict[str, Any]:
        verdict = None if self.verdict is None else self.verdict.to_json()
        return {
            "id": self.id, "model": self.model, "method": self.method, "task": self.task, "variant": self.variant,
            "status": self.status, "message": self.message, "worker": self.worker, "model_loads": self.model_loads,
            "device": self.device,
            "verdict": verdict, "result": None if self.result is None else self.result.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseReport:
        v = data.get("verdict")
        verdict = None if v is None else Verdict.from_json(v)
        result = None if data.get("result") is None else CaseResult.from_baseline(data["result"])
        return cls(data["id"], data["model"], data["method"], data["task"], data["variant"], data["status"], result,
                   verdict, data.get("message", ""), data.get("worker", "main"), data.get("model_loads", 0),
                   data.get("device", ""))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _delta(m: Metrics) -> str:
    low, high = m.delta_ci
    return f"{m.delta:+.2f} [{low:+.2f}, {high:+.2f}]"


def _verdict(report: CaseReport) -> str:
    return f"[{_STYLE.get(report.status, '')}]{report.status}[/]"


def _baseline(report: CaseReport) -> str:
    """The stored baseline's gated score and this run's change from it; 'missing' when none is stored."""
    if report.status == "missing":
        return "missing"
    v = report.verdict
    if v is None or v.stored_steered is None:
        return "new" if v is not None and v.baseline == "updating" else "-"
    if report.result is None:
        return f"{v.stored_steered:.2f}"
    change = report.result.metrics.steered - v.stored_steered
    return f"{v.stored_steered:.2f} ({change:+.2f})"


def _tolerance(report: CaseReport) -> str:
    """The allowed drop the case was judged with; 'auto' when it is the smallest drop its split can detect."""
    v = report.verdict
    if v is None or v.tolerance is None:
        return "-"
    return f"{v.tolerance:.3f}" + (" auto" if v.auto_tolerance else "")


def _computed(report: CaseReport) -> str:
    """'now' for a fresh result; 'reused' with the time it was computed (UTC) otherwise."""
    if report.result is None or not report.result.reused:
        return "now"
    when = (report.result.computed_at or "")[:16].replace("T", " ")
    return f"reused {when}" if when else "reused"


def _method(report: CaseReport) -> str:
    return f"{report.method} ({report.variant})" if report.variant else report.method


def build_table(reports: Sequence[CaseReport]) -> Table:
    """One row per steering-vector case, grouped by model and task so methods sit side by side."""
    table = Table(title="pytest-steer results (test split)", show_lines=False)
    for head in ("model", "task", "method"):
        table.add_column(head)
    for head in ("unsteered", "steered", "5-shot", "delta [95% CI]", "baseline (change)", "tolerance"):
        table.add_column(head, justify="right")
    table.add_column("chosen")
    table.add_column("side effect")
    table.add_column("verdict")
    table.add_column("computed")
    for r in sorted(reports, key=lambda r: (r.model, r.task, r.method, r.variant)):
        if r.result is None:
            table.add_row(r.model, r.task, _method(r), "-", "-", "-", "-", _baseline(r), _tolerance(r), "-", "-",
                          _verdict(r), "-")
            continue
        m = r.result.metrics
        chosen = "; ".join(cell(r.result) for _, cell in presentation_of(r.method).terminal)
        table.add_row(r.model, r.task, _method(r), _pct(m.unsteered), _pct(m.steered), _pct(m.icl), _delta(m),
                      _baseline(r), _tolerance(r), chosen, side_effect_text(r.result), _verdict(r), _computed(r))
    return table


def _pair(m: Metrics, name: str) -> str:
    if m.metric == name:
        return f"{m.unsteered:.2f}>{m.steered:.2f}"
    other = m.secondary.get(name)
    return "-" if other is None else f"{other.unsteered:.2f}>{other.steered:.2f}"


def build_metrics_table(reports: Sequence[CaseReport], shown: Presentation) -> Table:
    """One row per case of a method judged on several metrics: unsteered>steered for each, the gated one with its
    interval, then the method's own columns."""
    label = shown.label
    table = Table(title=f"pytest-steer {label} results (unsteered>{label}, test split)", show_lines=False)
    for head in ("model", "task", "variant"):
        table.add_column(head)
    for head in ("n", "MC1/acc", *(name.upper() for name in shown.secondary), "gated delta [95% CI]",
                 "baseline (change)", "tolerance"):
        table.add_column(head, justify="right")
    for head, _ in shown.terminal:
        table.add_column(head)
    table.add_column("side effect")
    table.add_column("verdict")
    table.add_column("computed")
    for r in sorted(reports, key=lambda r: (r.model, r.task, r.variant)):
        if r.result is None:
            table.add_row(r.model, r.task, r.variant or "-", *["-"] * (3 + len(shown.secondary)), _baseline(r),
                          _tolerance(r), *["-"] * len(shown.terminal), "-", _verdict(r), "-")
            continue
        m = r.result.metrics
        first = "mc1" if m.metric.startswith("mc") else "accuracy"
        table.add_row(
            r.model, r.task, r.variant or "-", str(m.n_test), _pair(m, first),
            *(_pair(m, name) for name in shown.secondary), f"{m.metric} {_delta(m)}", _baseline(r), _tolerance(r),
            *(cell(r.result) for _, cell in shown.terminal), side_effect_text(r.result), _verdict(r), _computed(r),
        )
    return table


def _text(tables: Sequence[Table], width: int, markup: bool) -> str:
    """Tables as text, coloured only when the terminal supports it."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=max(width, 180), force_terminal=markup, no_color=not markup, highlight=False)
    for table in tables:
        console.print(table)
    return buffer.getvalue()


def render_table(reports: Sequence[CaseReport], width: int, markup: bool) -> str:
    """The tables as text: every method of the vector layout in one, then one per method of the metrics layout."""
    shown = {r.method: presentation_of(r.method) for r in reports}
    vectors = [r for r in reports if shown[r.method].layout == "vector"]
    tables = [build_table(vectors)] if vectors else []
    for method in sorted(m for m in shown if shown[m].layout == "metrics"):
        tables.append(build_metrics_table([r for r in reports if r.method == method], shown[method]))
    return _text(tables, width, markup)


def counts(reports: Sequence[CaseReport]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in reports:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def write_json_report(path: Path, reports: Sequence[CaseReport], extra: dict[str, Any]) -> None:
    """The same content as the tables, with the full results, atomically."""
    atomic_write_json(path, {**extra, "counts": counts(reports), "cases": [r.to_json() for r in reports]})


def _replay(report: CaseReport) -> str:
    replay = None if report.result is None else report.result.replay
    if replay is None:
        return "-"
    if replay.error:
        return f"cannot apply: {replay.error}"
    return f"{replay.score:.2f} (accepted {replay.accepted:.2f})"


def build_changes_table(reports: Sequence[CaseReport]) -> Table:
    """Cases run on another model than their baselines were accepted for: the paired comparison of the gated
    score, the stored vector replayed, and how the chosen setting drifted."""
    table = Table(title="pytest-steer: against the accepted model (same test items, paired)", show_lines=True)
    table.add_column("case", no_wrap=True)
    for head in ("accepted", "now", "difference [95% CI]", "p", "lost / gained"):
        table.add_column(head, justify="right")
    for head in ("regression", "replay", "drift"):
        table.add_column(head)
    for r in sorted(reports, key=lambda r: r.id):
        v = r.verdict
        if v is None or not v.model_changed or not v.changes:
            continue
        c = next(c for c in v.changes if c.score == "steered")
        interval = "not paired" if c.interval is None or c.difference is None else \
            f"{c.difference:+.3f} [{c.interval[0]:+.3f}, {c.interval[1]:+.3f}]"
        ruling = "regression" if c.regression else ("within noise" if c.beyond_tolerance else "no")
        table.add_row(r.id, f"{c.before:.3f}", f"{c.after:.3f}", interval,
                      "-" if c.p_value is None else f"{c.p_value:.2g}", f"{c.lost} / {c.gained}", ruling, _replay(r),
                      "-" if v.drift is None else v.drift.describe())
    return table


def render_changes(reports: Sequence[CaseReport], width: int, markup: bool) -> str:
    """The comparison with the accepted model as text."""
    return _text([build_changes_table(reports)], width, markup)

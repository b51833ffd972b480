"""End-of-run summary: the rich table for the terminal and the JSON report file."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pytest_steer.store import atomic_write_json

_STYLE = {"pass": "green", "xpass": "yellow", "fail": "red", "xfail": "dim", "error": "bold red"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _delta(metrics: dict[str, Any]) -> str:
    low, high = metrics["delta_ci"]
    return f"{metrics['delta']:+.2f} [{low:+.2f}, {high:+.2f}]"


def build_table(records: Sequence[dict[str, Any]]) -> Table:
    """One row per steering-vector case, grouped by model and task so methods sit side by side."""
    table = Table(title="pytest-steer results (test split)", show_lines=False)
    for head in ("model", "task", "method"):
        table.add_column(head)
    for head in ("base", "steer", "ICL", "delta [95% CI]"):
        table.add_column(head, justify="right")
    table.add_column("chosen")
    table.add_column("verdict")
    for record in sorted(records, key=lambda r: (r["model"], r["task"], r["method"], r.get("variant", ""))):
        verdict = _verdict(record)
        metrics = record.get("metrics")
        if not metrics:
            table.add_row(record["model"], record["task"], _method(record), "-", "-", "-", "-", "-", verdict)
            continue
        chosen = ", ".join(f"{k}={v}" for k, v in record.get("chosen", {}).items() if k != "relative_depth")
        table.add_row(
            record["model"], record["task"], _method(record), _pct(metrics["unsteered"]), _pct(metrics["steered"]),
            _pct(metrics.get("icl")), _delta(metrics), chosen, verdict,
        )
    return table


def _method(record: dict[str, Any]) -> str:
    variant = record.get("variant")
    return f"{record['method']} ({variant})" if variant else record["method"]


def _verdict(record: dict[str, Any]) -> str:
    status = record["status"]
    return f"[{_STYLE.get(status, '')}]{status}[/]"


def _metric(metrics: dict[str, Any], name: str) -> dict[str, Any] | None:
    if metrics.get("metric", "accuracy") == name:
        return metrics
    return metrics.get("secondary", {}).get(name)


def _pair(metrics: dict[str, Any], name: str) -> str:
    m = _metric(metrics, name)
    return "-" if m is None else f"{m['unsteered']:.2f}>{m['steered']:.2f}"


def build_dola_table(records: Sequence[dict[str, Any]]) -> Table:
    """One row per DoLa case: baseline>DoLa for every metric, the gated one with its interval."""
    table = Table(title="pytest-steer DoLa results (baseline>DoLa, test split)", show_lines=False)
    for head in ("model", "task", "variant"):
        table.add_column(head)
    for head in ("n", "MC1/acc", "MC2", "MC3", "gated delta [95% CI]"):
        table.add_column(head, justify="right")
    table.add_column("top layer")
    table.add_column("verdict")
    for record in sorted(records, key=lambda r: (r["model"], r["task"], r.get("variant", ""))):
        metrics = record.get("metrics")
        chosen = record.get("chosen", {})
        bucket = record.get("variant") or chosen.get("bucket", "-")
        if not metrics:
            table.add_row(record["model"], record["task"], bucket, *["-"] * 6, _verdict(record))
            continue
        first = "accuracy" if _metric(metrics, "mc1") is None else "mc1"
        top = f"{chosen['top_premature_layer']} ({chosen['top_share']:.0%})" if "top_premature_layer" in chosen else "-"
        table.add_row(
            record["model"], record["task"], bucket, str(metrics["n_test"]), _pair(metrics, first), _pair(metrics, "mc2"),
            _pair(metrics, "mc3"), f"{metrics.get('metric', 'accuracy')} {_delta(metrics)}", top, _verdict(record),
        )
    return table


def render_table(records: Sequence[dict[str, Any]], width: int, markup: bool) -> str:
    """The tables as text (steering vectors, then DoLa), coloured only when the terminal supports it."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=max(width, 160), force_terminal=markup, no_color=not markup, highlight=False)
    vectors = [r for r in records if r["method"] != "dola"]
    dola = [r for r in records if r["method"] == "dola"]
    if vectors:
        console.print(build_table(vectors))
    if dola:
        console.print(build_dola_table(dola))
    return buffer.getvalue()


def counts(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record in records:
        out[record["status"]] = out.get(record["status"], 0) + 1
    return out


def write_json_report(path: Path, records: Sequence[dict[str, Any]], extra: dict[str, Any]) -> None:
    """The same content as the table, with the full records, atomically."""
    atomic_write_json(path, {**extra, "counts": counts(records), "cases": list(records)})

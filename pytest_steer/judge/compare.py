"""Run-to-run comparison: this run's cases against a saved JSON report (`--steer-compare`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pytest_steer.errors import SteerError
from pytest_steer.storage.files import read_json
from pytest_steer.record import RecordError
from pytest_steer.report.cases import CaseReport
from pytest_steer.report.saved import report_case
from pytest_steer.judge.stats import PairedTest, paired_bootstrap, paired_test


class CompareError(SteerError):
    """The saved report cannot be read; the message names the file and what was expected."""


@dataclass(frozen=True)
class Change:
    """One case whose verdict or gated score differs between the saved run and this one."""

    id: str
    before_status: str  # "-" when the saved run lacks the case
    after_status: str
    before: float | None
    after: float | None
    paired: tuple[float, float, float] | None = None  # mean difference and its 95% interval, same items only
    note: str = ""
    test: PairedTest | None = None  # McNemar (0/1) or sign-flip (graded) test of the same items, with the flips

    @property
    def drop(self) -> float:
        """How far the steered score fell (0 when it rose or cannot be compared)."""
        if self.before is None or self.after is None:
            return 0.0
        return max(0.0, self.before - self.after)


def load_saved(path: Path, what: str = "--steer-compare") -> dict[str, CaseReport]:
    """The cases of a report written by `--steer-report`, by id; CompareError naming `what` (the option or
    command reading it), the file and the field if it is not one."""
    where = f"{what} {path}"
    data = read_json(path, CompareError, "the saved report", where)
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise CompareError(f"{where}: not a pytest-steer report (expected an object with a 'cases' list)")
    try:
        cases = [report_case(raw, f"cases[{i}]") for i, raw in enumerate(data["cases"])]
    except RecordError as exc:
        raise CompareError(f"{where}: a case is malformed ({exc})") from exc
    return {case.id: case for case in cases}


def _paired(before: CaseReport, after: CaseReport) -> tuple[tuple[float, float, float] | None, str, PairedTest | None]:
    b, a = before.result, after.result
    if b is None or a is None:
        return None, "", None
    if b.outcomes.items != a.outcomes.items:
        return None, "test items differ: difference of means only", None
    interval = paired_bootstrap(list(a.outcomes.steered), list(b.outcomes.steered), seed=0)
    test = paired_test(list(b.outcomes.steered), list(a.outcomes.steered))
    return (interval.estimate, interval.low, interval.high), "", test


def compare(current: Sequence[CaseReport], saved: dict[str, CaseReport]) -> list[Change]:
    """Every case of this run whose verdict or steered score changed, or that the saved run lacks
    (cases the saved run has but this one did not select are not changes)."""
    changes = []
    now = {r.id: r for r in current}
    for cid in sorted(now):
        after, before = now[cid], saved.get(cid)
        a_score = None if after.result is None else after.result.metrics.steered
        b_score = None if before is None or before.result is None else before.result.metrics.steered
        b_status = "-" if before is None else before.status
        if after.status == b_status and a_score == b_score:
            continue
        paired, note, test = _paired(before, after) if before else (None, "not in the saved run", None)
        changes.append(Change(cid, b_status, after.status, b_score, a_score, paired, note, test))
    return changes


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(changes: Sequence[Change], source: Path, width: int, markup: bool) -> str:
    """The changes as a table, or one line saying nothing changed."""
    if not changes:
        return f"compared with {source}: no verdict or steered score changed\n"
    buffer = io.StringIO()
    console = Console(file=buffer, width=max(width, 140), force_terminal=markup, no_color=not markup, highlight=False)
    table = Table(title=f"pytest-steer: changes since {source}")
    for head in ("case", "verdict", "steered before", "steered now", "paired difference [95% CI]", "p", "lost / gained",
                 "note"):
        table.add_column(head, justify="left" if head in ("case", "verdict", "note") else "right")
    for c in changes:
        paired = "-" if c.paired is None else f"{c.paired[0]:+.3f} [{c.paired[1]:+.3f}, {c.paired[2]:+.3f}]"
        p, flips = ("-", "-") if c.test is None else (f"{c.test.p_value:.2g}", f"{c.test.lost} / {c.test.gained}")
        table.add_row(c.id, f"{c.before_status} -> {c.after_status}", _score(c.before), _score(c.after), paired, p,
                      flips, c.note)
    console.print(table)
    return buffer.getvalue()

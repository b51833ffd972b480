"""The pytest-steer section of the terminal summary: what a run found, built from its facts (no pytest)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_steer.report.cases import CaseReport, counts, render_changes, render_table


@dataclass(frozen=True)
class Line:
    """One line of the summary (`color` "red" or "yellow" where it needs attention), or a rendered table."""

    text: str
    color: str = ""
    block: bool = False


@dataclass
class RunFacts:
    """What the run knows at its end, as the summary needs it."""

    reports: list[CaseReport]
    verbose: bool = True
    width: int = 180
    markup: bool = False
    candidates: dict[str, Any] = field(default_factory=dict)
    update: bool = False
    correction: Any = None  # multiple.Correction
    broken: Sequence[Any] = ()  # cases.BrokenCase collected here
    durations: dict[str, float] = field(default_factory=dict)
    written: Sequence[Path] = ()
    write_errors: Sequence[str] = ()
    unused: Sequence[str] = ()
    crashed_workers: int = 0
    unfinished: Sequence[str] = ()
    report_path: Path | None = None
    html_path: Path | None = None
    compare_path: Path | None = None
    compared: Sequence[Any] = ()  # compare.Change
    dropped: Sequence[Any] = ()
    compare_fail: float | None = None


def summary(f: RunFacts) -> list[Line]:
    """Every line of the section, in order: tables and tally, what needs attention, what was written."""
    out: list[Line] = []
    if f.reports:
        out.extend(_judged(f))
    if f.broken and not f.reports:  # --collect-only: say now what would fail, and why
        out.append(Line(f"{len(f.broken)} case(s) cannot run:", "red"))
        out.extend(Line(f"  {case.id}: {case.message}", "red") for case in f.broken)
    slowest = sorted(f.durations.items(), key=lambda kv: -kv[1])[:5]
    if len(f.durations) > 1 and f.verbose:
        out.append(Line("slowest cases: " + ", ".join(f"{case} {seconds:.1f} s" for case, seconds in slowest)))
    out.extend(Line(f"baseline written: {path}") for path in f.written)
    out.extend(Line(error, "red") for error in f.write_errors)
    if f.unused and f.verbose:
        out.append(Line(f"{len(f.unused)} baseline(s) not used by any selected case:"))
        out.extend(Line(f"  {path}") for path in f.unused)
    if f.crashed_workers:
        out.append(Line(f"{f.crashed_workers} xdist worker(s) crashed: unused baselines were not listed"))
    out.extend(_written(f))
    if f.compare_path:
        from pytest_steer.judge.compare import render

        out.append(Line(render(f.compared, f.compare_path, f.width, f.markup), block=True))
        out.extend(Line(f"{c.id}: steered {c.after:.3f} dropped {c.drop:.3f} below the saved run's {c.before:.3f} "
                        f"(more than --steer-compare-fail {f.compare_fail})", "red") for c in f.dropped)
    return out


def _judged(f: RunFacts) -> list[Line]:
    reports = f.reports
    out = [Line(render_table(reports, f.width, f.markup), block=True)] if f.verbose else []
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts(reports).items()))
    out.append(Line(f"{len(reports)} steering cases: {tally}"))
    out.extend(Line(line, "red") for line in model_changes(reports))
    out.extend(Line(line, "yellow") for line in candidate_lines(reports, f.candidates, f.update))
    if any(r.verdict is not None and r.verdict.changes and r.verdict.model_changed for r in reports):
        out.append(Line(render_changes(reports, f.width, f.markup), block=True))
    out.extend(Line(f"{r.id}: {note}") for r in reports for note in (() if r.verdict is None else r.verdict.notes))
    if f.correction is not None and f.correction.comparisons:
        out.append(Line(f.correction.describe(), "red" if f.correction.late else ""))
        out.extend(Line(f"FAILED {r.id}: {r.verdict.reasons[-1]}", "red") for r in reports
                   if r.id in f.correction.late and r.verdict is not None)
    out.extend(Line(line, "yellow") for line in power_lines(reports))
    missing = [r for r in reports if r.status == "missing"]
    if missing:
        out.append(Line(f"{len(missing)} case(s) computed but not judged, no stored baseline: "
                        f"{', '.join(r.id for r in missing)}; run them with --steer-update to store one", "yellow"))
    reused = [r for r in reports if r.result is not None and r.result.reused]
    if reused:
        out.append(Line(f"{len(reused)} of them judged from results stored under unchanged inputs (no model "
                        "loaded for those); --steer-rerun recomputes"))
    out.extend(Line(line, "yellow" if line.startswith("  ") else "") for line in quick_lines(reports))
    out.extend(Line(line) for line in sequential_lines(reports))
    return out


def sequential_lines(reports: Sequence[CaseReport]) -> list[str]:
    """What `--steer-sequential` saved: the cases that stopped early and the test items scored of the design's."""
    runs = [r.result.diagnostics["sequential"] for r in reports
            if r.result is not None and isinstance(r.result.diagnostics.get("sequential"), dict)]
    if not runs:
        return []
    early = sum(1 for s in runs if s["items"] < s["of"])
    return [f"--steer-sequential: {early} case(s) stopped early; {sum(s['items'] for s in runs)} of "
            f"{sum(s['of'] for s in runs)} test items scored (the rest of each stopped case could not change its verdict "
            "at the run's alpha)"]


NO_VECTOR = "no accepted vector to replay"  # the method stores none, or the baseline has none


def quick_lines(reports: Sequence[CaseReport]) -> list[str]:
    """What `--steer-quick` did: cases judged by their replayed accepted vector, and why the others ran in full."""
    paths = [(r.id, r.verdict.quick) for r in reports if r.verdict is not None and r.verdict.quick]
    if not paths:
        return []
    replayed = sum(1 for _, path in paths if path == "replay")
    full = [(case, path.partition(": ")[2]) for case, path in paths if path != "replay"]
    lines = [f"--steer-quick: {replayed} case(s) judged by their accepted vector replayed at the accepted setting "
             f"(no extraction, no layer search); {len(full)} ran the full protocol"]
    lines.extend(f"  {case}: {why}" for case, why in full if why and why != NO_VECTOR)
    return lines


def _written(f: RunFacts) -> list[Line]:
    out = []
    if f.unfinished:
        more = " ..." if len(f.unfinished) > 5 else ""
        out.append(Line(f"{len(f.unfinished)} selected case(s) unfinished (a worker died or the run was interrupted): "
                        f"{', '.join(f.unfinished[:5])}{more}", "red"))
    if f.report_path and (f.reports or f.unfinished):
        complete = "" if not f.unfinished else f" (incomplete: {len(f.unfinished)} case(s) unfinished; merge refuses it)"
        out.append(Line(f"report written: {f.report_path}{complete}", "red" if f.unfinished else ""))
    if f.html_path and f.reports:
        out.append(Line(f"HTML report written: {f.html_path}"))
    return out


def candidate_lines(reports: Sequence[CaseReport], candidates: dict[str, Any], update: bool) -> list[str]:
    """What each candidate run judged, and whether the accepted baselines moved."""
    out = []
    for alias, candidate in sorted(candidates.items()):
        mine = [r for r in reports if r.model == alias]
        if not mine:
            continue
        if update:
            out.append(f"accepted model changed: {alias} is now {candidate.describe()}: --steer-update wrote the "
                       f"candidate's results as the baselines of {len(mine)} case(s)")
        else:
            out.append(f"candidate {alias} = {candidate.describe()}: {len(mine)} case(s) judged against the accepted "
                       f"baselines, which this run leaves unchanged (accept the candidate with --steer-update)")
    return out


def power_lines(reports: Sequence[CaseReport], shown: int = 3) -> list[str]:
    """Cases whose test split cannot see a drop as small as their tolerance (the JSON report has every case's)."""
    blind = [r for r in reports if r.verdict is not None and r.verdict.power is not None and r.verdict.power.blind]
    if not blind:
        return []
    lines = [f"power: {len(blind)} case(s) cannot see a drop as small as their tolerance (paired test, alpha "
             f"{blind[0].verdict.power.alpha:g}, power 0.8):"]  # type: ignore[union-attr]
    for r in sorted(blind, key=lambda r: -r.verdict.power.detectable)[:shown]:  # type: ignore[union-attr]
        p = r.verdict.power  # type: ignore[union-attr]
        lines.append(f"  {r.id}: {p.n} items cannot see a drop of {p.wanted:.2f} (smallest detectable "
                     f"{p.detectable:.3f}); use at least {p.needed}")
    if len(blind) > shown:
        lines.append(f"  ... and {len(blind) - shown} more (verdict.power in the JSON report)")
    return lines


def model_changes(reports: Sequence[CaseReport]) -> list[str]:
    """One line per model whose fingerprint differs from the one its baselines were accepted for."""
    changed: dict[tuple[str, str, str], int] = {}
    for r in reports:
        v = r.verdict
        if v is not None and v.model_changed and r.result is not None:
            key = (r.model, str(v.stored_fingerprint), r.result.provenance.fingerprint)
            changed[key] = changed.get(key, 0) + 1
    return [f"model changed: {model}: {old} -> {new} ({n} case(s) judged against baselines of the old model)"
            for (model, old, new), n in sorted(changed.items())]

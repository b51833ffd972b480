"""The run's correction for multiple comparisons: every judged case's paired p-values, ruled on together.

A case decides alone what no other p-value can change (p <= alpha / comparisons: rejected by Holm and by
Benjamini-Hochberg in any run of that size; p > alpha: never rejected). The rest waits for the run's end,
where the whole family is corrected and a drop the correction rejects fails the run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pytest_steer.report.cases import CaseReport
from pytest_steer.judge.stats import reject
from pytest_steer.judge.verdict import ScoreChange

JUDGED = ("ok", "regressed")  # baseline states whose changes are tests of this run (not updating, mismatched, new)


@dataclass(frozen=True)
class Correction:
    """What the run's correction decided."""

    method: str  # "holm", "bh" or "none"
    alpha: float
    comparisons: int  # paired p-values in the family
    regressions: int  # comparisons the correction rejects, beyond the tolerance (decided by a case or at the end)
    late: tuple[str, ...]  # ids of the cases that only the correction found regressed

    def describe(self) -> str:
        what = {"holm": f"Holm-corrected (family-wise alpha {self.alpha:g})",
                "bh": f"Benjamini-Hochberg-corrected (false discovery rate {self.alpha:g})",
                "none": f"uncorrected (alpha {self.alpha:g} each)"}[self.method]
        late = f", {len(self.late)} found only by the correction: {', '.join(self.late)}" if self.late else ""
        return f"regression tests: {self.comparisons} paired comparison(s), {what}: {self.regressions} regression(s){late}"


def family(reports: list[CaseReport]) -> list[tuple[int, int, ScoreChange]]:
    """(report index, change index, change) for every paired comparison of a judged case."""
    out = []
    for i, r in enumerate(reports):
        v = r.verdict
        if v is None or v.baseline not in JUDGED:
            continue
        out.extend((i, k, c) for k, c in enumerate(v.changes) if c.p_value is not None)
    return out


def correct(reports: list[CaseReport], method: str, alpha: float) -> tuple[list[CaseReport], Correction]:
    """The reports with the correction's late regressions written into them (status fail, verdict regressed)."""
    members = family(reports)
    rejected = reject([c.p_value for _, _, c in members], alpha, method)  # type: ignore[misc]
    out = list(reports)
    late: dict[int, list[int]] = {}  # report index -> indices of its changes the correction rejects
    regressions = 0
    for (i, k, c), hit in zip(members, rejected):
        regressions += int(c.regression or (hit and c.pending))
        if hit and c.pending:
            late.setdefault(i, []).append(k)
    for i, ks in late.items():
        r, v = out[i], out[i].verdict
        assert v is not None
        decided = tuple(replace(c, regression=True, pending=False) if k in ks else c for k, c in enumerate(v.changes))
        reasons = v.reasons + tuple(
            f"regression after the run's {method} correction over {len(members)} comparisons: {v.changes[k].describe()}"
            for k in ks)
        out[i] = replace(r, status="fail", verdict=replace(v, passed=False, reasons=reasons, baseline="regressed",
                                                            changes=decided, pending=False))
    return out, Correction(method, alpha, len(members), regressions, tuple(out[i].id for i in sorted(late)))

"""Turning a method's outcomes into metrics, and metrics into a pass/fail verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pytest_steer.record import CaseResult, Comparison, Metrics, Provenance
from pytest_steer.stats import paired_bootstrap


@dataclass(frozen=True)
class Gate:
    """The resolved thresholds for one case (case file values over ini / CLI defaults)."""

    threshold: float
    tolerance: float
    min_recovery: float | None
    gate: str  # "mean": the point estimate of the improvement; "ci_low": its lower bound


BaselineStatus = Literal["ok", "regressed", "mismatch", "updating", "new"]


class BaselineMissing(Exception):
    """No stored baseline for a case; the message holds the command that creates it."""


@dataclass(frozen=True)
class Verdict:
    """Whether the case passed, every reason why not, and how it compares with its baseline."""

    passed: bool
    reasons: tuple[str, ...] = ()
    baseline: BaselineStatus = "ok"
    stored_steered: float | None = None
    stored_fingerprint: str | None = None
    model_changed: bool = False


def compare(unsteered: np.ndarray, steered: np.ndarray, seed: int) -> Comparison:
    """Means and the paired bootstrap interval of steered - unsteered."""
    interval = paired_bootstrap(steered, unsteered, seed=seed)
    return Comparison(float(unsteered.mean()), float(steered.mean()), interval.estimate, (interval.low, interval.high),
                      interval.level, int(unsteered.size))


def metrics_from_outcomes(
    unsteered: np.ndarray, steered: np.ndarray, icl: np.ndarray | None, seed: int, metric: str = "accuracy",
    secondary: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Metrics:
    """The gated comparison, recovery vs the 5-shot ICL score, and each secondary metric's comparison."""
    gated = compare(unsteered, steered, seed)
    icl_score = None if icl is None else float(icl.mean())
    recovery = None
    if icl_score is not None and icl_score > 0:
        recovery = gated.steered / icl_score
    others = {name: compare(u, s, seed) for name, (u, s) in (secondary or {}).items()}
    return Metrics(gated, metric, icl_score, recovery, others)


def judge(result: CaseResult, gate: Gate, stored: CaseResult | None, updating: bool) -> Verdict:
    """(a) improvement >= threshold (and recovery >= minimum); (b) the stored result is comparable
    (same model, task data, split sizes and seed) and the run has not fallen below it beyond the
    tolerance: neither the steered score nor the unsteered or 5-shot scores."""
    metrics = result.metrics
    reasons = _gate_reasons(metrics, gate)
    status: BaselineStatus = "updating" if updating else ("new" if stored is None else "ok")
    if not updating and stored is not None:
        mismatch = provenance_mismatch(result.provenance, stored.provenance)
        regressions = _regressions(metrics, stored.metrics, gate.tolerance)
        if mismatch:
            status = "mismatch"
            reasons.extend(mismatch)
        elif regressions:
            status = "regressed"
            reasons.extend(regressions)
    return Verdict(
        passed=not reasons, reasons=tuple(reasons), baseline=status,
        stored_steered=None if stored is None else stored.metrics.steered,
        stored_fingerprint=None if stored is None else stored.provenance.fingerprint,
        model_changed=stored is not None and stored.provenance.fingerprint != result.provenance.fingerprint,
    )


def _gate_reasons(metrics: Metrics, gate: Gate) -> list[str]:
    reasons: list[str] = []
    improvement = metrics.delta if gate.gate == "mean" else metrics.delta_ci[0]
    label = "improvement" if gate.gate == "mean" else "lower CI bound of the improvement"
    if improvement < gate.threshold - 1e-12:
        reasons.append(
            f"{label} {improvement:+.3f} (steered {metrics.steered:.3f} - unsteered "
            f"{metrics.unsteered:.3f}) is below the threshold {gate.threshold:+.3f}"
        )
    if gate.min_recovery is not None:
        recovery = metrics.recovery
        if recovery is None or recovery < gate.min_recovery - 1e-12:
            shown = "n/a (ICL accuracy is 0)" if recovery is None else f"{recovery:.3f}"
            reasons.append(f"recovery steered/ICL {shown} is below the minimum {gate.min_recovery:.3f}")
    return reasons


def provenance_mismatch(run: Provenance, stored: Provenance) -> list[str]:
    """Why a stored result cannot be compared with this run (empty when it can)."""
    out = []
    if run.fingerprint != stored.fingerprint:
        out.append(f"model changed: {stored.fingerprint} -> {run.fingerprint}; the stored baseline was accepted for "
                   "another model: accept this one with --steer-update")
    if run.task_data.sha256 != stored.task_data.sha256:
        out.append(f"task data changed: {stored.task_data.sha256[:12]} -> {run.task_data.sha256[:12]} "
                   f"({run.task_data.source}); refresh the baseline with --steer-update")
    if run.counts != stored.counts or run.seed != stored.seed:
        out.append(f"split changed: stored {_split(stored)}, this run {_split(run)}; the items differ, so the scores "
                   "cannot be compared: refresh the baseline with --steer-update")
    return out


def _split(p: Provenance) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(p.counts.items())) + f", seed={p.seed}"


def _regressions(run: Metrics, stored: Metrics, tolerance: float) -> list[str]:
    """Every score of the run that fell below its stored value by more than the tolerance."""
    out = []
    for name, now, then in (("steered", run.steered, stored.steered), ("unsteered", run.unsteered, stored.unsteered),
                            ("5-shot", run.icl, stored.icl)):
        if now is not None and then is not None and now < then - tolerance - 1e-12:
            out.append(f"regression: {name} {now:.3f} is below the stored baseline {then:.3f} minus tolerance {tolerance:.3f}")
    return out

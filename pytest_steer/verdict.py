"""Turning a method's outcomes into metrics and a pass/fail verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pytest_steer.stats import paired_bootstrap


@dataclass(frozen=True)
class Gate:
    """The resolved thresholds for one case (case file values over ini / CLI defaults)."""

    threshold: float
    tolerance: float
    min_recovery: float | None
    gate: str  # "mean": the point estimate of the improvement; "ci_low": its lower bound


@dataclass
class Verdict:
    """Whether the case passed and, if not, every reason why."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    baseline: str = "ok"  # ok, regressed, missing, updating


def metrics_from_outcomes(
    unsteered: np.ndarray, steered: np.ndarray, ceiling: np.ndarray | None, seed: int
) -> dict[str, Any]:
    """Accuracies, the improvement with its paired bootstrap interval, and recovery vs the ceiling."""
    interval = paired_bootstrap(steered, unsteered, seed=seed)
    metrics: dict[str, Any] = {
        "unsteered": float(unsteered.mean()),
        "steered": float(steered.mean()),
        "delta": interval.estimate,
        "delta_ci": [interval.low, interval.high],
        "ci_level": interval.level,
        "n_test": int(unsteered.size),
    }
    if ceiling is not None:
        icl = float(ceiling.mean())
        metrics["icl"] = icl
        metrics["recovery"] = float(steered.mean()) / icl if icl > 0 else None
    return metrics


def judge(metrics: dict[str, Any], gate: Gate, baseline: dict[str, Any] | None, updating: bool) -> Verdict:
    """(a) improvement >= threshold (and recovery >= minimum); (b) steered >= stored - tolerance."""
    reasons: list[str] = []
    improvement = metrics["delta"] if gate.gate == "mean" else metrics["delta_ci"][0]
    label = "improvement" if gate.gate == "mean" else "lower CI bound of the improvement"
    if improvement < gate.threshold - 1e-12:
        reasons.append(
            f"{label} {improvement:+.3f} (steered {metrics['steered']:.3f} - unsteered "
            f"{metrics['unsteered']:.3f}) is below the threshold {gate.threshold:+.3f}"
        )
    if gate.min_recovery is not None:
        recovery = metrics.get("recovery")
        if recovery is None or recovery < gate.min_recovery - 1e-12:
            shown = "n/a (ICL accuracy is 0)" if recovery is None else f"{recovery:.3f}"
            reasons.append(f"recovery steered/ICL {shown} is below the minimum {gate.min_recovery:.3f}")
    status = "updating" if updating else "ok"
    if not updating and baseline is not None:
        stored = float(baseline["metrics"]["steered"])
        if metrics["steered"] < stored - gate.tolerance - 1e-12:
            status = "regressed"
            reasons.append(
                f"regression: steered {metrics['steered']:.3f} is below the stored baseline "
                f"{stored:.3f} minus tolerance {gate.tolerance:.3f}"
            )
    return Verdict(passed=not reasons, reasons=reasons, baseline=status)

"""Drift: how the setting a method chose, and the curves behind it, moved from the accepted result to this run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_steer.record import CaseResult

@dataclass(frozen=True)
class Drift:
    """The accepted and the current choice, and how alike the evidence for it is."""

    before: dict[str, Any]  # the accepted chosen setting (the keys the method's presentation names)
    after: dict[str, Any]
    curve: str  # which curve was correlated (the method's drift curve), "" when none
    correlation: float | None  # Pearson r of the two curves; None when one is flat or they differ in length
    heads_shared: int | None = None  # where the method picks heads: top heads in both
    heads_total: int | None = None
    histogram_shift: float | None = None  # where it picks layers per position: total variation of their shares

    @property
    def moved(self) -> tuple[str, ...]:
        """The setting keys whose value changed."""
        return tuple(k for k in self.before if self.after.get(k) != self.before[k])

    def describe(self) -> str:
        """One line: what moved, the curves' correlation, heads overlap, histogram shift."""
        parts = [f"{k} {self.before[k]} -> {self.after.get(k)}" for k in self.moved] or ["setting unchanged"]
        if self.correlation is not None:
            parts.append(f"{self.curve} r={self.correlation:.2f}")
        if self.heads_total:
            parts.append(f"top heads {self.heads_shared}/{self.heads_total} shared")
        if self.histogram_shift is not None:
            parts.append(f"layer histogram moved {self.histogram_shift:.2f} (total variation)")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "moved": list(self.moved), "curve": self.curve,
                "correlation": self.correlation, "heads_shared": self.heads_shared, "heads_total": self.heads_total,
                "histogram_shift": self.histogram_shift}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Drift:
        return cls(dict(data["before"]), dict(data["after"]), str(data["curve"]), data.get("correlation"),
                   data.get("heads_shared"), data.get("heads_total"), data.get("histogram_shift"))


def drift(accepted: CaseResult, now: CaseResult) -> Drift:
    """Compare the accepted result's choice and curves with this run's, as the method's presentation says."""
    from pytest_steer.methods.presentation import presentation_of

    shown = presentation_of(now.method)
    found = now.diagnostics.get("extracted_chosen", now.chosen)  # a case gated on the replay keeps the accepted setting
    before = {k: accepted.chosen[k] for k in shown.setting_keys(accepted.chosen)}
    after = {k: found[k] for k in shown.setting_keys(found)}
    curve = shown.curve(accepted, now)
    correlation = _correlation(accepted.curves[curve], now.curves[curve]) if curve else None
    extras = shown.drift_extras(accepted, now)
    return Drift(before, after, curve, correlation, extras.get("heads_shared"), extras.get("heads_total"),
                 extras.get("histogram_shift"))


def _correlation(a: list[Any], b: list[Any]) -> float | None:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2 or x.std() == 0 or y.std() == 0:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)

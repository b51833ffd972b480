"""Drift: how the setting a method chose, and the curves behind it, moved from the accepted result to this run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pytest_steer.record import CaseResult

_SETTING_KEYS = ("layer", "heads", "strength", "top_premature_layer")


@dataclass(frozen=True)
class Drift:
    """The accepted and the current choice, and how alike the evidence for it is."""

    before: dict[str, Any]  # the accepted chosen setting (layer, heads, strength, top premature layer)
    after: dict[str, Any]
    curve: str  # which curve was correlated ("dev_accuracy", "premature_share"), "" when none
    correlation: float | None  # Pearson r of the two curves; None when one is flat or they differ in length
    heads_shared: int | None = None  # function vectors: top heads in both
    heads_total: int | None = None
    histogram_shift: float | None = None  # DoLa: total variation distance of the premature-layer shares

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
            parts.append(f"premature-layer histogram moved {self.histogram_shift:.2f} (total variation)")
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
    """Compare the accepted result's choice and curves with this run's."""
    before = {k: accepted.chosen[k] for k in _SETTING_KEYS if k in accepted.chosen}
    found = now.diagnostics.get("extracted_chosen", now.chosen)  # a case gated on the replay keeps the accepted setting
    after = {k: found[k] for k in _SETTING_KEYS if k in found}
    curve = next((name for name in ("dev_accuracy", "premature_share") if name in accepted.curves and name in now.curves), "")
    correlation = _correlation(accepted.curves[curve], now.curves[curve]) if curve else None
    shared = total = None
    if "top_heads" in accepted.diagnostics and "top_heads" in now.diagnostics:
        old = {tuple(h) for h in accepted.diagnostics["top_heads"]}
        new = {tuple(h) for h in now.diagnostics["top_heads"]}
        shared, total = len(old & new), max(len(old), len(new))
    shift = None
    if curve == "premature_share" and accepted.curves.get("premature_layers") == now.curves.get("premature_layers"):
        a, b = np.asarray(accepted.curves[curve], float), np.asarray(now.curves[curve], float)
        if a.shape == b.shape:
            shift = round(float(0.5 * np.abs(a - b).sum()), 4)
    return Drift(before, after, curve, correlation, shared, total, shift)


def _correlation(a: list[Any], b: list[Any]) -> float | None:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2 or x.std() == 0 or y.std() == 0:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)

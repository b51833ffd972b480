"""How a method's results are shown: its columns in the tables, its figures, what its drift compares.

The report, HTML, markdown and drift code know no method by name; each asks `presentation_of(method)`. A
method without a presentation of its own (a third-party one that sets no `presentation` attribute) gets the
generic one: its chosen setting as `key=value`, every numeric curve as a line, drift over every scalar chosen
key. No torch, and plotly only inside the figure functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pytest_steer.record import CaseResult

Cell = Callable[[CaseResult], str]


def chosen_text(r: CaseResult) -> str:
    """The chosen setting as `key=value` pairs (all but the derived relative depth)."""
    return ", ".join(f"{k}={v}" for k, v in r.chosen.items() if k != "relative_depth")


def side_effect_text(r: CaseResult) -> str:
    """The control task unsteered > steered and the change, or "-" where the case scored no control."""
    s = r.side_effect
    if s is None:
        return "-"
    before, after = sum(s.unsteered) / len(s.items), sum(s.steered) / len(s.items)
    return f"{s.task} {before:.2f}>{after:.2f} ({after - before:+.2f})"


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool)) or value is None


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and len(values) > 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def curve_figures(result: CaseResult, stored: CaseResult | None) -> list[Any]:
    """Every numeric curve of the result as a line (the stored baseline's beside it where it has the curve)."""
    import plotly.graph_objects as go

    figures = []
    for name, values in sorted(result.curves.items()):
        if not _numbers(values):
            continue
        figure = go.Figure(go.Scatter(y=values, mode="lines+markers", name=f"{name} (this run)"))
        if stored is not None and _numbers(stored.curves.get(name)):
            figure.add_trace(go.Scatter(y=stored.curves[name], mode="lines", line={"dash": "dash"},
                                        name=f"{name} (stored baseline)"))
        figure.update_layout(title=name, xaxis_title="index", width=620, height=360)
        figures.append(figure)
    return figures


@dataclass(frozen=True)
class Presentation:
    """What the report layer needs from a method to show it.

    `layout` picks the table a case goes in: "vector" (unsteered, steered, 5-shot, delta) or "metrics" (each
    metric's unsteered > steered pair, for methods judged on several metrics). `columns` are the method's own
    columns in the README tables and `terminal` those of the terminal table; `figures(result, stored)` gives
    the HTML page's figures of a case (`stored`: the baseline to draw beside, or None). `drift_keys` are the
    chosen keys whose change counts as drift (None: every scalar key), `drift_curve` the curve correlated, and
    `drift_extras(accepted, now)` any further drift fields (`heads_shared`, `heads_total`, `histogram_shift`)."""

    label: str = "steered"
    layout: Literal["vector", "metrics"] = "vector"
    columns: tuple[tuple[str, Cell], ...] = (("chosen", chosen_text),)
    terminal: tuple[tuple[str, Cell], ...] = (("chosen", chosen_text),)
    secondary: tuple[str, ...] = ()  # the secondary metrics a "metrics" table lists
    figures: Callable[[CaseResult, CaseResult | None], list[Any]] = curve_figures
    drift_keys: tuple[str, ...] | None = None
    drift_curve: str | None = None
    drift_extras: Callable[[CaseResult, CaseResult], dict[str, Any]] = lambda accepted, now: {}

    def setting_keys(self, chosen: dict[str, Any]) -> list[str]:
        keys = self.drift_keys if self.drift_keys is not None else [k for k, v in chosen.items()
                                                                    if _scalar(v) and k != "relative_depth"]
        return [k for k in keys if k in chosen]

    def curve(self, accepted: CaseResult, now: CaseResult) -> str:
        """The curve drift correlates: this method's, else the first numeric curve both results have."""
        if self.drift_curve is not None:
            return self.drift_curve if self.drift_curve in accepted.curves and self.drift_curve in now.curves else ""
        return next((n for n in sorted(now.curves) if _numbers(now.curves[n]) and _numbers(accepted.curves.get(n))), "")


GENERIC = Presentation()


def presentation_of(method: str) -> Presentation:
    """The method's presentation: its own (`presentation` on the method class), else the generic one; the generic
    one too for a method this installation does not know (a report from elsewhere)."""
    from pytest_steer.methods import RegistryError, methods

    try:
        entry = methods()[method]
    except (KeyError, RegistryError):
        return GENERIC
    found = entry.presentation()
    return found if isinstance(found, Presentation) else GENERIC


# ------------------------------------------------------------------ the built-in methods


def layer_curve(result: CaseResult, stored: CaseResult | None) -> Any:
    """Dev accuracy over layers, the chosen layer, unsteered and 5-shot test levels, the test score with its interval."""
    import plotly.graph_objects as go

    m, curves = result.metrics, result.curves
    layers, accuracy = curves["dev_layers"], curves["dev_accuracy"]
    figure = go.Figure(go.Scatter(x=layers, y=accuracy, mode="lines+markers", name="dev accuracy (this run)"))
    if stored is not None and stored.curves.get("dev_accuracy"):
        figure.add_trace(go.Scatter(x=stored.curves["dev_layers"], y=stored.curves["dev_accuracy"], mode="lines",
                                    line={"dash": "dash"}, name="dev accuracy (stored baseline)"))
    layer = result.chosen["layer"]
    low, high = m.delta_ci
    figure.add_trace(go.Scatter(x=[layer], y=[m.steered], mode="markers", marker={"size": 11, "symbol": "diamond"},
                                name=f"test, steered {m.steered:.2f}",
                                error_y={"type": "data", "symmetric": False, "array": [m.unsteered + high - m.steered],
                                         "arrayminus": [m.steered - m.unsteered - low]}))
    figure.add_vline(x=layer, line_dash="dot", annotation_text=f"chosen layer {layer}")
    figure.add_hline(y=m.unsteered, line_color="gray", annotation_text=f"unsteered {m.unsteered:.2f}")
    if m.icl is not None:
        figure.add_hline(y=m.icl, line_color="green", annotation_text=f"5-shot {m.icl:.2f}")
    figure.update_layout(title="accuracy against layer", xaxis_title="layer", yaxis_title="accuracy",
                         yaxis_range=[-0.02, 1.02], width=620, height=380)
    return figure


def strength_grid(result: CaseResult) -> Any | None:
    """The function-vector (heads, strength) dev grid at the chosen layer."""
    import plotly.graph_objects as go

    c = result.curves
    if "grid_dev_accuracy" not in c:
        return None
    figure = go.Figure(go.Heatmap(z=c["grid_dev_accuracy"], x=[f"{s:g}" for s in c["grid_strengths"]],
                                  y=[str(h) for h in c["grid_heads"]], colorscale="Viridis", zmin=0, zmax=1,
                                  texttemplate="%{z:.2f}", colorbar={"title": "dev acc"}))
    figure.update_layout(title=f"(heads, strength) at layer {result.chosen['layer']}", xaxis_title="strength (lambda)",
                         yaxis_title="heads", width=520, height=380)
    return figure


def vector_figures(result: CaseResult, stored: CaseResult | None) -> list[Any]:
    """The layer curve, and the (heads, strength) grid where the method searched one."""
    figures = [layer_curve(result, stored)] if "dev_layers" in result.curves else []
    grid = strength_grid(result)
    return figures + ([grid] if grid is not None else [])


def dola_figures(result: CaseResult, stored: CaseResult | None = None) -> list[Any]:
    """The premature-layer histogram and unsteered vs DoLa bars for every metric."""
    import plotly.graph_objects as go

    c, m = result.curves, result.metrics
    histogram = go.Figure(go.Bar(x=[str(l) for l in c["premature_layers"]], y=c["premature_share"]))
    histogram.update_layout(title="premature layer chosen (share of scored tokens)", xaxis_title="layer",
                            yaxis_title="share", width=520, height=360)
    comparisons = {m.metric: m.gated, **m.secondary}
    names = sorted(comparisons)
    bars = go.Figure([
        go.Bar(name="unsteered", x=names, y=[comparisons[n].unsteered for n in names]),
        go.Bar(name="DoLa", x=names, y=[comparisons[n].steered for n in names],
               error_y={"type": "data", "symmetric": False,
                        "array": [comparisons[n].unsteered + comparisons[n].delta_ci[1] - comparisons[n].steered for n in names],
                        "arrayminus": [comparisons[n].steered - comparisons[n].unsteered - comparisons[n].delta_ci[0]
                                       for n in names]}),
    ])
    bars.update_layout(title=f"unsteered vs DoLa (gated: {m.metric})", barmode="group", yaxis_range=[0, 1.02],
                       width=520, height=360)
    return [histogram, bars]


def _layer_of(r: CaseResult) -> str:
    return f"{r.chosen['layer']} ({r.provenance.adapter.get('num_layers', '?')})"


def _layer_heads_strength(r: CaseResult) -> str:
    return f"{r.chosen['layer']}, {r.chosen['heads']}, {r.chosen['strength']:g}"


def _top_layer(r: CaseResult) -> str:
    chosen = r.chosen
    return f"{chosen['top_premature_layer']} ({chosen['top_share']:.0%})" if "top_premature_layer" in chosen else "-"


def _tied(r: CaseResult) -> str:
    tied = r.diagnostics.get("tie_share", r.diagnostics.get("near_tie_share"))
    return "-" if tied is None else f"{tied:.2f}"


def _heads_overlap(accepted: CaseResult, now: CaseResult) -> dict[str, Any]:
    if "top_heads" not in accepted.diagnostics or "top_heads" not in now.diagnostics:
        return {}
    old = {tuple(h) for h in accepted.diagnostics["top_heads"]}
    new = {tuple(h) for h in now.diagnostics["top_heads"]}
    return {"heads_shared": len(old & new), "heads_total": max(len(old), len(new))}


def _histogram_shift(accepted: CaseResult, now: CaseResult) -> dict[str, Any]:
    name = "premature_share"
    if name not in accepted.curves or name not in now.curves:
        return {}
    if accepted.curves.get("premature_layers") != now.curves.get("premature_layers"):
        return {}
    a, b = np.asarray(accepted.curves[name], float), np.asarray(now.curves[name], float)
    return {"histogram_shift": round(float(0.5 * np.abs(a - b).sum()), 4)} if a.shape == b.shape else {}


TASK_VECTOR = Presentation(columns=(("layer (of L)", _layer_of),), figures=vector_figures, drift_keys=("layer",),
                           drift_curve="dev_accuracy")
FUNCTION_VECTOR = Presentation(columns=(("layer, heads, lambda", _layer_heads_strength),), figures=vector_figures,
                               drift_keys=("layer", "heads", "strength"), drift_curve="dev_accuracy",
                               drift_extras=_heads_overlap)
DOLA = Presentation(label="DoLa", layout="metrics", secondary=("mc2", "mc3"),
                    columns=(("top premature layer (share)", _top_layer), ("tied share", _tied)),
                    terminal=(("top layer", _top_layer),), figures=dola_figures, drift_keys=("top_premature_layer",),
                    drift_curve="premature_share", drift_extras=_histogram_shift)


def _opposite(r: CaseResult) -> str:
    """The score at the opposite multiplier (or strength): how far the behaviour can be pushed the other way."""
    c = r.metrics.secondary.get("opposite")
    return "-" if c is None else f"{c.steered:.3f}"


def _layer_multiplier(r: CaseResult) -> str:
    return f"{r.chosen['layer']}, {r.chosen['multiplier']:g}"


def _strength_layers(r: CaseResult) -> str:
    layers = r.chosen.get("layers", [])
    shown = ",".join(map(str, layers[:4])) + ("..." if len(layers) > 4 else "")
    return f"{r.chosen['strength']:g} (blocks {shown})"


CAA = Presentation(columns=(("layer, multiplier", _layer_multiplier), ("opposite sign", _opposite)),
                   terminal=(("layer, mult", _layer_multiplier),), figures=vector_figures,
                   drift_keys=("layer", "multiplier"), drift_curve="dev_accuracy")
BYO = Presentation(columns=(("strength (blocks)", _strength_layers), ("opposite sign", _opposite)),
                   terminal=(("strength", _strength_layers),), drift_keys=("strength",), drift_curve="dev_accuracy")

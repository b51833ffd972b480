"""The HTML report: one self-contained page (plotly figures, a jinja2 template) of a run.

    pytest steering_cases --steer-html report.html            # during a run
    python -m pytest_steer html run.json -o report.html       # from a saved --steer-report

Per method a heatmap of models x tasks coloured by the steering gain (a button switches to
recovery, steered / 5-shot, for methods shown with the vector layout), each cell marked with
its verdict; per case the figures its method presents (`methods.presentation`: for the
built-ins the dev curve over layers, the (heads, strength) grid, the chosen-layer
histogram and metric bars; for any other method every numeric curve), the stored
baseline's beside a failed case; and the run's provenance. plotly.js is inlined, so the
file opens without a network.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pytest_steer.errors import SteerError
from pytest_steer.storage.files import atomic_write_bytes
from pytest_steer.methods.presentation import presentation_of, side_effect_text
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport, counts

EXTRA_HINT = "pip install 'pytest-steer[html]'"
MARK = {"pass": "pass", "fail": "FAIL", "xfail": "xfail", "xpass": "XPASS", "error": "ERROR", "missing": "missing"}


class HtmlUnavailable(SteerError):
    """plotly or jinja2 is not installed."""


def require() -> None:
    """Raise HtmlUnavailable (naming the extra to install) unless plotly and jinja2 import."""
    missing = []
    for module in ("plotly", "jinja2"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise HtmlUnavailable(f"the HTML report needs {' and '.join(missing)}: {EXTRA_HINT}")


def _html(figure: Any) -> str:
    return figure.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _update_lines(report: CaseReport) -> list[str]:
    """Against the accepted model (when the model changed): each score's paired change, the drift, the notes."""
    v = report.verdict
    if v is None:
        return []
    lines = [c.describe() for c in v.changes] if v.model_changed else []
    if v.drift is not None:
        lines.append("drift: " + v.drift.describe())
    return lines + list(v.notes)


def _column(report: CaseReport) -> str:
    return f"{report.task} ({report.variant})" if report.variant else report.task


def heatmap(method: str, reports: Sequence[CaseReport]) -> Any:
    """Models x tasks coloured by steered - unsteered, text = verdict; vector methods get a recovery button."""
    import plotly.graph_objects as go

    models = sorted({r.model for r in reports})
    columns = sorted({_column(r) for r in reports})
    gain = [[None] * len(columns) for _ in models]
    recovery = [[None] * len(columns) for _ in models]
    text = [[""] * len(columns) for _ in models]
    for r in reports:
        i, j = models.index(r.model), columns.index(_column(r))
        reused = " ↺" if r.result is not None and r.result.reused else ""
        if r.result is not None:
            m = r.result.metrics
            gain[i][j], recovery[i][j] = round(m.delta, 3), None if m.recovery is None else round(m.recovery, 3)
            text[i][j] = f"{MARK.get(r.status, r.status)}{reused}<br>{m.delta:+.2f}"
        else:
            text[i][j] = MARK.get(r.status, r.status)
    figure = go.Figure(go.Heatmap(z=gain, x=columns, y=models, text=text, texttemplate="%{text}", colorscale="RdBu",
                                  zmid=0, colorbar={"title": "gain"}, hovertemplate="%{y} / %{x}<br>%{z}<extra></extra>"))
    figure.update_layout(title=f"{method}: steered - unsteered (test split; ↺ reused result)", height=140 + 60 * len(models),
                         width=max(520, 140 + 120 * len(columns)), margin={"l": 160})
    if presentation_of(method).layout == "vector":  # accuracy against a 5-shot ceiling: recovery means something
        figure.update_layout(updatemenus=[{"type": "buttons", "direction": "right", "x": 0, "y": 1.25, "buttons": [
            {"label": "gain", "method": "restyle", "args": [{"z": [gain], "zmid": 0, "colorbar.title.text": "gain"}]},
            {"label": "recovery (steered over 5-shot)", "method": "restyle",
             "args": [{"z": [recovery], "zmid": 1, "colorbar.title.text": "recovery"}]},
        ]}])
    return figure


def _side_effect(report: CaseReport) -> str:
    """The control task under the steering, with its paired test where the verdict has one."""
    v = report.verdict
    if v is not None and v.side_effect is not None:
        gated = "not gated" if v.side_effect.limit is None else f"max_side_effect {v.side_effect.limit:g}"
        return f"side effect: {v.side_effect.describe()} ({gated})"
    if report.result is not None and report.result.side_effect is not None:
        return f"side effect: {side_effect_text(report.result)}"
    return ""


def case_figures(report: CaseReport, stored: CaseResult | None) -> list[Any]:
    """The case's figures as its method presents them; the stored baseline drawn beside a failed or regressed case."""
    result = report.result
    if result is None:
        return []
    compare_with = stored if report.status in ("fail", "error") or (
        report.verdict is not None and report.verdict.baseline == "regressed") else None
    return presentation_of(result.method).figures(result, compare_with)


def render(reports: Sequence[CaseReport], stored: Callable[[CaseReport], CaseResult | None],
           expand: Sequence[str] = ()) -> str:
    """The page as a string; `stored(report)` gives the case's stored baseline (or None). Failed
    cases and those named in `expand` start unfolded."""
    require()
    import jinja2
    from markupsafe import Markup
    from plotly.offline import get_plotlyjs

    results = [r.result for r in reports if r.result is not None]
    models: dict[str, dict[str, str]] = {}
    for r in results:
        models.setdefault(r.model, {"name": r.model, "fingerprint": r.provenance.fingerprint,
                                    "source": json.dumps(r.provenance.model_source)})
    versions = results[0].provenance.versions if results else {}
    cases = []
    for report in sorted(reports, key=lambda r: r.id):
        reasons = "; ".join(report.verdict.reasons) if report.verdict is not None else report.message
        cases.append({
            "id": report.id, "status": report.status, "reasons": reasons, "open": report.status in ("fail", "error") or report.id in expand,
            "reused": bool(report.result and report.result.reused),
            "computed_at": report.result.computed_at if report.result else "",
            "figures": [Markup(_html(f)) for f in case_figures(report, stored(report))],
            "against_accepted": _update_lines(report),
            "side_effect": _side_effect(report),
        })
    by_method: dict[str, list[CaseReport]] = {}
    for report in reports:
        by_method.setdefault(report.method, []).append(report)
    template = jinja2.Environment(autoescape=True).from_string(
        resources.files("pytest_steer.report").joinpath("templates/report.html.j2").read_text(encoding="utf-8"))
    return template.render(
        plotly_js=Markup(f'<script type="text/javascript">{get_plotlyjs()}</script>'),
        counts=sorted(counts(reports).items()), versions=", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        placements=", ".join(sorted({f"{r.provenance.device}, {r.provenance.dtype}" for r in results})) or "-", seeds=", ".join(str(s) for s in sorted({r.provenance.seed for r in results})),
        models=list(models.values()),
        heatmaps=[Markup(_html(heatmap(method, rs))) for method, rs in sorted(by_method.items())],
        cases=cases,
    )


def write_html(path: Path, reports: Sequence[CaseReport], stored: Callable[[CaseReport], CaseResult | None],
               expand: Sequence[str] = ()) -> None:
    """Write the page atomically."""
    atomic_write_bytes(Path(path), render(reports, stored, expand).encode("utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    from pytest_steer.storage.baselines import BaselineStore
    from pytest_steer.cases.casefile import task_slot
    from pytest_steer.judge.compare import load_saved
    from pytest_steer.storage.files import check_output

    parser = argparse.ArgumentParser(prog="python -m pytest_steer html", description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="a JSON report written by --steer-report")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    parser.add_argument("--expand", action="append", default=[], metavar="CASE_ID", help="unfold this case's section")
    args = parser.parse_args(argv)
    try:
        require()
        check_output(args.output, "-o", create=True)
        reports = list(load_saved(args.report, "report").values())
    except SteerError as exc:
        print(f"python -m pytest_steer html: {exc}", file=sys.stderr)
        return 2
    store = BaselineStore(args.baselines)

    def stored(r: CaseReport) -> CaseResult | None:
        try:
            return store.load(r.model, r.method, task_slot(r.task, r.variant))
        except SteerError:  # a damaged baseline: the page shows the run without it
            return None

    try:
        write_html(args.output, reports, stored, args.expand)
    except OSError as exc:
        print(f"python -m pytest_steer html: -o {args.output}: not written ({exc})", file=sys.stderr)
        return 2
    print(f"report written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

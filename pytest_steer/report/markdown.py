"""Markdown tables of the stored baselines, so a document's figures are generated, never retyped.

    python -m pytest_steer markdown docs/results.md           # rewrite every generated block
    python -m pytest_steer markdown docs/results.md --check   # exit 1 if a block is out of date

A block is the text between `<!-- steer-table METHOD -->` and `<!-- /steer-table -->`;
METHOD is a registered method (its presentation gives the columns). Verdicts are the ones the stored results
get from their case files' gates (with the default threshold 0.1 unless a case sets one); the
tolerance is the one a run of the case's profile judges it with (auto: the smallest drop its
test split can detect, Holm-corrected over the profile's cases at alpha 0.05).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.cases.casefile import Case, load_case_file
from pytest_steer.methods import methods
from pytest_steer.methods.presentation import presentation_of, side_effect_text
from pytest_steer.record import CaseResult, Comparison
from pytest_steer.judge.verdict import Gate, case_tolerance, comparisons, judge, resolve_tolerance

BLOCK = re.compile(r"(<!-- steer-table (\w+) -->\n)(.*?)(<!-- /steer-table -->)", re.S)


def expected_status(case: Case, stored: CaseResult, threshold: float = 0.1, tolerance: float | None = None) -> str:
    """The status a run reproducing `stored` gets from the case's gate and expectation."""
    o = case.options
    gate = Gate(threshold if o.threshold is None else o.threshold, case_tolerance(o.tolerance, tolerance),
                o.min_recovery, o.gate)
    passed = judge(stored, gate, None, False).passed
    if o.expect == "fail":
        return "xpass" if passed else "xfail"
    return "pass" if passed else "fail"


def _verdict(case: Case, stored: CaseResult) -> str:
    status = expected_status(case, stored)
    return "xfail (declared)" if status == "xfail" else status


def _interval(c: Comparison) -> str:
    return f"{c.delta:+.2f} [{c.delta_ci[0]:+.2f}, {c.delta_ci[1]:+.2f}]"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pair(r: CaseResult, name: str) -> str:
    m = r.metrics
    c = m.gated if m.metric == name else m.secondary.get(name)
    if c is None:
        return "-"
    label = "acc" if name == "accuracy" else name.upper()
    return f"{label} {c.unsteered:.2f} > {c.steered:.2f}, {_interval(c)}"


def layout(method: str) -> tuple[tuple[str, ...], Callable[[Case, CaseResult], list[str]]]:
    """The header and the row function of a method's table, from its presentation."""
    shown = presentation_of(method)
    own = tuple(head for head, _ in shown.columns)
    if shown.layout == "metrics":
        head = ("model", "task", "variant", "n", f"gated: unsteered > {shown.label}, delta [95% CI]",
                *(f"{name.upper()} (CI of delta)" for name in shown.secondary), *own, "side effect", "verdict")

        def metrics_row(case: Case, r: CaseResult) -> list[str]:
            return [r.model, r.task, r.variant or "-", str(r.metrics.n_test), _pair(r, r.metrics.metric),
                    *(_pair(r, name) for name in shown.secondary), *(cell(r) for _, cell in shown.columns),
                    side_effect_text(r), _verdict(case, r)]
        return head, metrics_row
    head = ("model", "task", "zero-shot", "steered", "5-shot ICL", "delta [95% CI]", *own, "side effect", "verdict")

    def vector_row(case: Case, r: CaseResult) -> list[str]:
        m = r.metrics
        return [r.model, r.task, _pct(m.unsteered), _pct(m.steered), _pct(m.icl), _interval(m.gated),
                *(cell(r) for _, cell in shown.columns), side_effect_text(r), _verdict(case, r)]
    return head, vector_row


def table(method: str, cases: Sequence[Case], store: BaselineStore) -> str:
    """One markdown table of the stored baselines of `method`, a row per case that has one."""
    head, row = layout(method)
    head = (*head[:-1], "tolerance", head[-1])
    profiles = Counter(c.options.profile for c in cases)  # a run of a profile judges its cases together
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in sorted((c for c in cases if c.method == method), key=lambda c: (c.model.name, c.task, c.variant)):
        stored = store.load(case.model.name, case.method, case.slot)
        if stored is not None:
            cells = row(case, stored)
            lines.append("| " + " | ".join([*cells[:-1], _tolerance(case, stored, comparisons(profiles[case.options.profile])),
                                            cells[-1]]) + " |")
    return "\n".join(lines) + "\n"


def _tolerance(case: Case, stored: CaseResult, family: int) -> str:
    """The tolerance a run of the case's profile judges it with (Holm over that profile's cases, alpha 0.05)."""
    tolerance = case_tolerance(case.options.tolerance, None)
    gate = resolve_tolerance(Gate(0.1, tolerance, None, "mean", multiple="holm", comparisons=family), stored)
    return f"{gate.tolerance:.3f}" + (" (auto)" if tolerance is None else "")


def render(text: str, cases: Sequence[Case], store: BaselineStore) -> str:
    """`text` with every generated block rewritten from the baselines."""
    def block(match: re.Match[str]) -> str:
        method = match.group(2)
        if method not in methods():
            raise ValueError(f"unknown table '{method}' (expected a method: {', '.join(methods())})")
        return match.group(1) + table(method, cases, store) + match.group(4)

    return BLOCK.sub(block, text)


def load_cases(folder: Path) -> list[Case]:
    return [c for path in sorted(folder.glob("steer_*.toml")) for c in load_case_file(path) if isinstance(c, Case)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_steer markdown", description=__doc__.splitlines()[0])
    parser.add_argument("document", type=Path)
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    parser.add_argument("--cases", type=Path, default=Path("steering_cases"))
    parser.add_argument("--check", action="store_true", help="exit 1 if a block differs from the baselines")
    args = parser.parse_args(argv)
    text = args.document.read_text()
    new = render(text, load_cases(args.cases), BaselineStore(args.baselines))
    if args.check:
        if new != text:
            print(f"{args.document}: generated tables differ from {args.baselines}; run "
                  f"python -m pytest_steer markdown {args.document}", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.document.write_text(new)
        print(f"{args.document}: tables rewritten from {args.baselines}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

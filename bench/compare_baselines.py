"""Compare a run's JSON report (`--steer-report`) with the committed baselines, field by field.

    python bench/compare_baselines.py report.json [--baselines baselines] [--cases steering_cases]

For every case of the report: the verdict expected from the stored result and the case
file's gate and expectation against the run's status, then metrics, chosen setting, curves,
per-item outcomes, counts, seed, task hash, fingerprint and settings. Exits 1 on any difference.
`--except fingerprint` compares everything else (after a change of what the fingerprint covers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.report.markdown import expected_status
from pytest_steer.cases.casefile import Case, load_case_file
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport

FIELDS = {
    "metrics": lambda r: r.metrics.to_json(),
    "chosen": lambda r: r.chosen,
    "curves": lambda r: r.curves,
    "per_item": lambda r: r.outcomes.to_json(),
    "counts": lambda r: r.provenance.counts,
    "seed": lambda r: r.provenance.seed,
    "task_sha256": lambda r: r.provenance.task_data.sha256,
    "fingerprint": lambda r: r.provenance.fingerprint,
    "settings": lambda r: r.provenance.settings,
    "side_effect": lambda r: None if r.side_effect is None else r.side_effect.to_json(),
}


ADDED: list[str] = []  # fields the run has and the stored result lacks (with --allow-added)

# Graded secondary metrics (DoLa's MC2 and MC3: per-item probability masses, stored to 6 places, and their
# means) sum softmax probabilities over answer tokens, so they move in the last places with the order of float
# reductions (thread count, process layout, and the CPU's vector kernels). Between two runs they may differ by at
# most GRADED_BOUND; every other field, and every gated outcome, must be identical. No default case gates on a
# graded metric (tests/test_bench_compare.py checks it), so the bound cannot change a verdict. Measured: at most
# 5e-6 between thread counts on one machine; at most 3.3e-5 on a fresh machine of this project's kind against
# the committed baselines (2026-12-06: 5 DoLa truthful-mc cases beyond the earlier bound of 1e-5). DoLa's scores
# are float32 sums of log-ratios over answer tokens (tens in magnitude): a relative rounding of ~1e-7 per term
# moves a probability mass by up to ~1e-5..1e-4, hence 1e-4.
GRADED_BOUND = 1e-4
GRADED_SEEN: list[float] = []  # the graded differences within the bound, for the summary
_EXACT_ITEMS = {"steered", "unsteered", "icl", "items"}


def graded(path: str) -> bool:
    """A field of a secondary (never gated) graded metric: metrics.secondary.* or per_item.<metric>_<arm>."""
    if path.startswith("metrics.secondary."):
        return True
    parts = path.split(".")
    return len(parts) >= 2 and parts[0] == "per_item" and parts[1].split("[")[0] not in _EXACT_ITEMS


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _diff(a: object, b: object, path: str, out: list[str], allow_added: bool = False) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if allow_added and key in a and key not in b:
                ADDED.append(f"{path}.{key}")
                continue
            _diff(a.get(key), b.get(key), f"{path}.{key}", out, allow_added)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out, allow_added)
    elif a != b:
        if _number(a) and _number(b) and graded(path) and abs(a - b) <= GRADED_BOUND:  # type: ignore[operator]
            GRADED_SEEN.append(abs(a - b))  # type: ignore[operator]
            return
        out.append(f"{path}: run {a!r} != stored {b!r}")


def field_problems(run: CaseResult, stored: CaseResult, skip: list[str], allow_added: bool = False) -> list[str]:
    """Every field of FIELDS (less `skip`) in which two results differ."""
    problems: list[str] = []
    for name, get in FIELDS.items():
        if name not in skip:
            _diff(json.loads(json.dumps(get(run))), json.loads(json.dumps(get(stored))), name, problems, allow_added)
    return problems


def show(label: str, problems: list[str]) -> None:
    print(f"{'SAME' if not problems else 'DIFF'}  {label}")
    for p in problems[:20]:
        print(f"      {p}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    parser.add_argument("--cases", type=Path, default=Path("steering_cases"))
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--tolerance", type=float, default=None, help="default: auto")
    parser.add_argument("--except", dest="skip", action="append", default=[], choices=sorted(FIELDS),
                        help="leave a field out (e.g. fingerprint after a change of what it covers); the verdict is "
                             "then the one the run's own numbers get from the gate, not the run's status")
    parser.add_argument("--allow-added", action="store_true",
                        help="fields the run records and the stored result lacks are listed, not counted as differences")
    args = parser.parse_args()
    store = BaselineStore(args.baselines)
    cases = {c.id: c for f in sorted(args.cases.glob("steer_*.toml")) for c in load_case_file(f) if isinstance(c, Case)}
    reports = [CaseReport.from_json(c) for c in json.loads(args.report.read_text())["cases"]]
    bad = 0
    for r in sorted(reports, key=lambda r: r.id):
        case = cases[r.id]
        stored = store.load(case.model.name, case.method, case.slot)
        problems: list[str] = []
        if r.result is None or stored is None:
            problems.append("no result" if r.result is None else "no stored baseline")
        else:
            want = expected_status(case, stored, args.threshold, args.tolerance)
            got = expected_status(case, r.result, args.threshold, args.tolerance) if args.skip else r.status
            if got != want:
                problems.append(f"status: run {got} != expected {want}")
            problems.extend(field_problems(r.result, stored, args.skip, args.allow_added))
        bad += bool(problems)
        show(f"{r.status:5}  {r.id}", problems)
    print(f"{len(reports)} cases compared field by field ({', '.join(f for f in FIELDS if f not in args.skip)}) and by verdict: "
          f"{len(reports) - bad} identical, {bad} different")
    if GRADED_SEEN:
        print(f"graded secondary fields within the bound {GRADED_BOUND:g}: {len(GRADED_SEEN)} differ, at most "
              f"{max(GRADED_SEEN):.1e}")
    if ADDED:
        fields = sorted({a.split(".", 1)[0] + "." + a.split(".", 1)[1].split(".")[0] for a in ADDED if "." in a})
        print(f"fields the run added (not in the stored results): {', '.join(fields)} in {len(ADDED)} places")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

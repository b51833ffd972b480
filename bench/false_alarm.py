"""Simulated candidate runs of the default suite: how often the regression rule fails a run in which nothing
truly changed (false alarm), and how often it catches a true drop of one case.

    python bench/false_alarm.py [--runs 400] [--churn 0,0.05,0.2] [--seed 0]

Each simulated run starts from every committed default baseline (the accepted per-item outcomes of the steered,
unsteered and 5-shot scores) and draws the candidate's outcomes under a null model: each item is, with
probability `churn`, drawn anew from its score's own accuracy (lost and gained equally likely in expectation, so
nothing truly changed). Churn 0 is a re-saved model or another thread count that reproduces the numbers exactly;
0.05-0.2 is a model whose items move at random. Every case is then judged with the plugin's own code (`judge`,
tolerance auto, the run's correction by `correct`), as a real run would. A run is a false alarm when any case
is flagged regressed.

For detection, one case per run (drawn at random) also loses a true drop of its steered score: `k` of its correct
items become wrong, for k = the tolerance in items, one more, and twice the tolerance. Detected: that case is flagged.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.cases.casefile import Case, load_case_file
from pytest_steer.judge.multiple import correct
from pytest_steer.record import CaseResult, Outcomes
from pytest_steer.report.cases import CaseReport
from pytest_steer.judge.verdict import Gate, comparisons, judge, metrics_from_outcomes, resolve_tolerance


def default_cases(folder: Path, store: BaselineStore) -> list[tuple[Case, CaseResult]]:
    out = []
    for path in sorted(folder.glob("steer_*.toml")):
        for case in load_case_file(path):
            if isinstance(case, Case) and case.options.profile == "default":
                stored = store.load(case.model.name, case.method, case.slot)
                if stored is not None:
                    out.append((case, stored))
    return out


def _redraw(values: tuple[float, ...] | None, churn: float, rng: np.random.Generator) -> tuple[float, ...] | None:
    if values is None:
        return None
    v = np.asarray(values, dtype=float)
    moved = rng.random(v.size) < churn
    fresh = (rng.random(v.size) < v.mean()).astype(float)
    return tuple(np.where(moved, fresh, v).tolist())


def _drop(values: tuple[float, ...], k: int, rng: np.random.Generator) -> tuple[float, ...]:
    v = np.asarray(values, dtype=float).copy()
    correct_items = np.flatnonzero(v == 1)
    v[rng.choice(correct_items, size=min(k, correct_items.size), replace=False)] = 0.0
    return tuple(v.tolist())


def candidate(stored: CaseResult, steered: tuple[float, ...], unsteered: tuple[float, ...],
              icl: tuple[float, ...] | None) -> CaseResult:
    """The stored result with other per-item outcomes and the metrics they give (same items, model, seed)."""
    metrics = metrics_from_outcomes(np.array(unsteered), np.array(steered), None if icl is None else np.array(icl),
                                    seed=stored.provenance.seed, metric=stored.metrics.metric)
    outcomes = Outcomes(stored.outcomes.items, unsteered, steered, icl, stored.outcomes.secondary)
    return replace(stored, metrics=metrics, outcomes=outcomes)


DROPS = {"tolerance": lambda t: t, "tolerance + 1 item": lambda t: t + 1, "2 x tolerance": lambda t: 2 * t}


def simulate(pairs: list[tuple[Case, CaseResult]], churn: float, multiple: str, alpha: float, rng: np.random.Generator,
             drop: str | None = None) -> tuple[bool, bool | None]:
    """One candidate run: (any case flagged, the dropped case flagged). `drop` None: nothing truly changed;
    otherwise one case, drawn at random, loses DROPS[drop](its tolerance in items) correct items."""
    m = comparisons(len(pairs))
    gate = Gate(threshold=-1.0, tolerance=None, min_recovery=None, gate="mean", alpha=alpha, multiple=multiple,
                comparisons=m)
    victim = int(rng.integers(len(pairs))) if drop is not None else -1
    reports = []
    for i, (case, stored) in enumerate(pairs):
        o = stored.outcomes
        steered = _redraw(o.steered, churn, rng)
        if i == victim:
            items = round(resolve_tolerance(gate, stored).tolerance * len(o.steered))  # type: ignore[operator]
            steered = _drop(steered, DROPS[drop](items), rng)  # type: ignore[arg-type,index]
        now = candidate(stored, steered, _redraw(o.unsteered, churn, rng), _redraw(o.icl, churn, rng))  # type: ignore[arg-type]
        v = judge(now, gate, stored, False)
        reports.append(CaseReport(case.id, case.model.name, case.method, case.task, case.variant,
                                  "pass" if v.passed else "fail", now, v))
    out, _ = correct(reports, multiple, alpha)
    flagged = [r.verdict is not None and r.verdict.baseline == "regressed" for r in out]
    return any(flagged), (flagged[victim] if victim >= 0 else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--churn", default="0,0.05,0.2")
    parser.add_argument("--multiple", default="holm,bh,none")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baselines", type=Path, default=Path("baselines"))
    parser.add_argument("--cases", type=Path, default=Path("steering_cases"))
    args = parser.parse_args()
    pairs = default_cases(args.cases, BaselineStore(args.baselines))
    print(f"{len(pairs)} default cases with baselines; {args.runs} simulated runs per cell; alpha {args.alpha}\n")
    print("| churn | correction | runs with a false alarm | " + " | ".join(f"detected: drop = {d}" for d in DROPS) + " |")
    print("|---|---|---|" + "---|" * len(DROPS))
    for churn in (float(c) for c in args.churn.split(",")):
        for multiple in args.multiple.split(","):
            rng = np.random.default_rng(args.seed)
            alarms = sum(simulate(pairs, churn, multiple, args.alpha, rng)[0] for _ in range(args.runs))
            hits = [sum(bool(simulate(pairs, churn, multiple, args.alpha, rng, d)[1]) for _ in range(args.runs))
                    for d in DROPS]
            print(f"| {churn:g} | {multiple} | {alarms / args.runs:.3f} | "
                  + " | ".join(f"{h / args.runs:.3f}" for h in hits) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

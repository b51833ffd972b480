"""`--steer-sequential`: its error rates by simulation, and the test items it saves on the default suite.

    python bench/sequential_bench.py [--runs 2000] [--n 98] [--alpha 0.05] [--seed 0]

1. Simulation. Paired 0/1 outcomes (unsteered, steered) of n items are drawn with a true improvement at and
   around the gate's threshold, and candidate steered outcomes with a true drop at and beyond the tolerance.
   For each scenario: how often the sequential rule stopped early, how often an early decision was wrong
   (a pass when the true improvement is below the threshold, a fail when it is not, "no regression" when the
   true drop is beyond the tolerance), how often its verdict differs from the one on every item, and the
   items used. Every early-decision error rate must be at most alpha.
2. The default suite. For every committed DoLa baseline (the method that scores test items one by one), the
   rule is applied to its own per-item outcomes in the fixed order, as a run on an unchanged model would
   score them, with the gate the suite gives the case (threshold, "auto" tolerance at the run's Holm level):
   the items it would score of the design's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from pytest_steer.cases.casefile import Case, load_case_file
from pytest_steer.judge.sequential import Rule, stop_at
from pytest_steer.judge.verdict import Gate, auto_tolerance, comparisons
from pytest_steer.storage.baselines import BaselineStore


def draw(rng: np.random.Generator, n: int, base: float, change: float) -> tuple[np.ndarray, np.ndarray]:
    """0/1 pairs (before, after) with P(before) = base and mean(after - before) = change (discordant pairs only)."""
    before = (rng.random(n) < base).astype(float)
    after = before.copy()
    flip = rng.random(n)
    up, down = max(change, 0.0) + 0.1, max(-change, 0.0) + 0.1  # 0.1 churn both ways, net `change`
    after[(before == 0) & (flip < up / max(1 - base, 1e-9))] = 1
    after[(before == 1) & (flip < down / max(base, 1e-9))] = 0
    return before, after


def simulate(args: argparse.Namespace) -> list[str]:
    rng = np.random.default_rng(args.seed)
    threshold, tolerance = 0.1, 0.12
    rule = Rule(threshold, tolerance, args.alpha)
    rows = ["| scenario | true value | stopped early | wrong early decision | verdict differs from all items | items used (mean) |",
            "|---|---|---|---|---|---|"]
    for kind, truths in (("gate: improvement", (-0.05, 0.0, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3)),
                         ("regression: drop", (0.0, 0.06, 0.12, 0.18, 0.24))):
        for truth in truths:
            early = wrong = differ = used = 0
            for _ in range(args.runs):
                if kind.startswith("gate"):
                    u, s = draw(rng, args.n, 0.3, truth)
                    accepted = None
                    look = stop_at(rule, u, s, accepted, seed=int(rng.integers(1 << 30)))
                    stop = look.items
                    full = s.mean() - u.mean() >= threshold
                    seq = look.gate == "pass" if stop < args.n else full
                    bad = stop < args.n and ((seq and truth < threshold) or (not seq and truth >= threshold))
                else:  # the candidate's steered outcomes against the accepted ones; the gate passes clearly
                    a, s = draw(rng, args.n, 0.7, -truth)
                    u = np.zeros(args.n)
                    accepted = {"steered": a, "unsteered": u.copy()}
                    stop = stop_at(rule, u, s, accepted, seed=int(rng.integers(1 << 30))).items
                    full = not (a.mean() - s.mean() > tolerance)  # the tolerance rule on every item
                    seq = True if stop < args.n else full
                    bad = stop < args.n and truth > tolerance
                early += stop < args.n
                wrong += bad
                differ += (seq != full)
                used += stop
            print(f"  {kind} {truth:+.2f} done", file=sys.stderr, flush=True)
            rows.append(f"| {kind} | {truth:+.2f} | {early / args.runs:.3f} | {wrong / args.runs:.4f} | "
                        f"{differ / args.runs:.3f} | {used / args.runs:.1f} of {args.n} |")
    return rows


def suite(args: argparse.Namespace) -> list[str]:
    store = BaselineStore(Path("baselines"))
    cases = [c for f in sorted(Path("steering_cases").glob("steer_*.toml")) for c in load_case_file(f)
             if isinstance(c, Case)]
    family = comparisons(sum(1 for c in cases if c.options.profile == "default"))
    rows = ["| case | items scored | of | gate | tolerance |", "|---|---|---|---|---|"]
    total = used = 0
    passes: dict[tuple[str, str], tuple[int, int]] = {}  # (model, task) -> (items, of): the variants share a pass
    for case in cases:
        if case.method != "dola" or case.options.profile != "default":
            continue
        stored = store.load(case.model.name, case.method, case.slot)
        if stored is None:
            continue
        gate = Gate(threshold=0.1 if case.options.threshold is None else case.options.threshold, tolerance=None,
                    min_recovery=None, gate=case.options.gate, alpha=args.alpha, multiple="holm", comparisons=family)
        u = np.asarray(stored.outcomes.unsteered, dtype=float)
        s = np.asarray(stored.outcomes.steered, dtype=float)
        tolerance = auto_tolerance(s, len(s), gate.level)
        stop = stop_at(Rule(gate.threshold, tolerance, args.alpha), u, s, {"steered": s, "unsteered": u},
                       seed=stored.provenance.seed).items
        verdict = "pass" if s.mean() - u.mean() >= gate.threshold else "fail"
        rows.append(f"| {case.id} | {stop} | {len(s)} | {verdict} | {tolerance:.3f} |")
        total += len(s)
        used += stop
        key = (case.model.name, case.task)
        passes[key] = (max(stop, passes.get(key, (0, 0))[0]), len(s))
    rows.append(f"| all DoLa cases | {used} | {total} | | ({1 - used / total:.1%} saved) |")
    shared, of = sum(p[0] for p in passes.values()), sum(p[1] for p in passes.values())
    rows.append(f"| shared passes (a model's variants stop together) | {shared} | {of} | | "
                f"({1 - shared / of:.1%} saved) |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--n", type=int, default=98)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sim = simulate(args)
    print(f"Simulation ({args.runs} runs per row, {args.n} items, alpha {args.alpha}, threshold 0.1, tolerance 0.12):")
    print("\n".join(sim))
    print("\nThe default suite's DoLa cases on an unchanged model (their committed outcomes, in the fixed order):")
    print("\n".join(suite(args)))
    worst = max(float(r.split("|")[4]) for r in sim[2:])
    print(f"\nlargest wrong-early-decision rate: {worst:.4f} (alpha {args.alpha})")
    return 0 if worst <= args.alpha else 1


if __name__ == "__main__":
    sys.exit(main())

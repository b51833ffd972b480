"""Does a verdict depend on how the suite was run? The suite under two ways of running it, compared field by field.

    python bench/threads_check.py [-m EXPR] [--serial-threads 2] [--xdist-report done.json] [--out DIR]

Runs `pytest steering_cases` twice, each time fresh (its own empty vector and result cache; the converted models
are shared): once under xdist (`-n 2`: two workers of one torch thread each) and once serially with
`--serial-threads` torch threads (OMP_NUM_THREADS). The two runs differ in process layout, thread count and so
in the order of every float reduction. Their JSON reports are then compared case by case: status (verdict),
metrics, chosen settings, curves, per-item outcomes, counts, seed, task hash, fingerprint and settings.
Exits 1 on any difference, except graded secondary metrics within `compare_baselines.GRADED_BOUND`. `--xdist-report` takes earlier xdist runs' reports instead of running it again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_baselines import FIELDS, GRADED_BOUND, GRADED_SEEN, field_problems, show  # noqa: E402

from pytest_steer.cases.casefile import Case, load_case_file  # noqa: E402
from pytest_steer.report.markdown import expected_status  # noqa: E402
from pytest_steer.report.cases import CaseReport  # noqa: E402


def run_suite(name: str, extra: list[str], env: dict[str, str], args: argparse.Namespace, out: Path) -> Path:
    report = out / f"{name}.json"
    with tempfile.TemporaryDirectory(prefix="steer-threads-") as scratch:
        (Path(scratch) / "models").symlink_to(Path(args.models).expanduser().resolve())
        select = ["-m", args.m] if args.m else []
        command = [sys.executable, "-m", "pytest", "steering_cases", "-q", "-p", "no:cacheprovider", *select, *extra,
                   f"--steer-cache-dir={scratch}", f"--steer-report={report}"]
        started = time.perf_counter()
        done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True)
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
        print(f"{name:8} {time.perf_counter() - started:8.1f} s  {last}", flush=True)
    return report


def _cases(paths: list[Path]) -> dict[str, CaseReport]:
    return {r.id: r for path in paths for r in map(CaseReport.from_json, json.loads(path.read_text())["cases"])}


def compare(first: list[Path], second: list[Path], rejudge: bool = False, common: bool = False) -> int:
    """Field by field, and by status (with `rejudge`: the status each result gets from today's case files, for
    reports taken before an expectation changed; with `common`: only the cases both runs have, for a slice)."""
    a, b = _cases(first), _cases(second)
    if common:
        a, b = {k: v for k, v in a.items() if k in b}, {k: v for k, v in b.items() if k in a}
    cases = {c.id: c for f in sorted(Path("steering_cases").glob("steer_*.toml")) for c in load_case_file(f)
             if isinstance(c, Case)} if rejudge else {}
    bad = 0
    for case in sorted(set(a) | set(b)):
        problems: list[str] = []
        x, y = a.get(case), b.get(case)
        if x is None or y is None or x.result is None or y.result is None:
            problems.append("missing from one run or without a result")
        else:
            sx, sy = (expected_status(cases[case], x.result), expected_status(cases[case], y.result)) if rejudge \
                else (x.status, y.status)
            if sx != sy:
                problems.append(f"status: {sx} != {sy}")
            problems.extend(field_problems(x.result, y.result, []))
        bad += bool(problems)
        show(case, problems)
    print(f"{len(set(a) | set(b))} cases compared field by field ({', '.join(FIELDS)}) and by status: "
          f"{len(set(a) | set(b)) - bad} identical, {bad} different")
    if GRADED_SEEN:
        print(f"graded secondary fields (never gated) within the bound {GRADED_BOUND:g}: {len(GRADED_SEEN)} differ, "
              f"at most {max(GRADED_SEEN):.1e}")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", help="marker expression of the slice (default: the whole default suite)")
    parser.add_argument("--serial-threads", type=int, default=2)
    parser.add_argument("--xdist-report", type=Path, action="append",
                        help="an earlier `-n 2` run's --steer-report, not run again (repeat for slices of the suite)")
    parser.add_argument("--models", default=str(Path.home() / ".cache" / "pytest-steer" / "models"))
    parser.add_argument("--out", type=Path, default=Path("threads-check"))
    parser.add_argument("--serial-report", type=Path, action="append",
                        help="compare with these serial reports instead of running (with --xdist-report)")
    parser.add_argument("--rejudge", action="store_true", help="statuses from today's case files, not the runs'")
    parser.add_argument("--common", action="store_true", help="compare only the cases both runs have (a slice)")
    args = parser.parse_args()
    if args.serial_report:
        return compare(args.xdist_report, args.serial_report, args.rejudge, args.common)
    args.out.mkdir(parents=True, exist_ok=True)
    first = args.xdist_report or run_suite("xdist", ["-n", "2", "--dist", "loadgroup"], {}, args, args.out)
    second = run_suite(f"serial{args.serial_threads}", [], {"OMP_NUM_THREADS": str(args.serial_threads)}, args,
                       args.out)
    return compare(first if isinstance(first, list) else [first], [second], args.rejudge)


if __name__ == "__main__":
    sys.exit(main())

"""`--steer-quick` against the full protocol on candidate models: same verdicts, and how much faster.

    python bench/quick_bench.py [--model smollm2-135m] [-m EXPR] [--noise 0.1 --blocks 12-17] [--out DIR]

Makes two candidate copies of a packaged model with `python -m pytest_steer perturb`: one byte for byte, one
with seeded Gaussian noise in some blocks. For each copy it runs the model's cases twice, each fresh (its own
empty vector and result cache; the converted models are shared), one after the other on this machine:

    full:  pytest steering_cases -m EXPR -n 2 --dist loadgroup --steer-candidate MODEL=COPY
    quick: the same with --steer-quick

and prints, per copy, both wall times, their ratio, how many cases the replay settled, and every case whose
verdict (pass/fail) differs between the two. Exits 1 on any differing verdict.
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


def run(name: str, args: argparse.Namespace, copy: Path, quick: bool) -> tuple[float, dict[str, dict]]:
    report = args.out / f"{name}.json"
    with tempfile.TemporaryDirectory(prefix="steer-quick-") as scratch:
        (Path(scratch) / "models").symlink_to(Path(args.models).expanduser().resolve())
        command = [sys.executable, "-m", "pytest", "steering_cases", "-q", "-p", "no:cacheprovider", "-m", args.m,
                   "-n", "2", "--dist", "loadgroup", f"--steer-candidate={args.model}={copy}",
                   f"--steer-cache-dir={scratch}", f"--steer-report={report}", *(["--steer-quick"] if quick else [])]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        seconds = time.perf_counter() - started
    (args.out / f"{name}.log").write_text(done.stdout + done.stderr)  # the whole terminal output, to quote
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-300:]
    print(f"  {name:16} {seconds:8.1f} s  {tail}", flush=True)
    if not report.is_file():
        raise SystemExit(f"{name}: no report written (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return seconds, {c["id"]: c for c in json.loads(report.read_text())["cases"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("-m", default=None, help="marker expression (default: the model's task and function vectors)")
    parser.add_argument("--noise", default="0.1")
    parser.add_argument("--blocks", default="12-17")
    parser.add_argument("--models", default=str(Path.home() / ".cache" / "pytest-steer" / "models"),
                        help="the converted models folder to share (default: the user cache's)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="quick-bench-")))
    args = parser.parse_args(argv)
    args.m = args.m or f"{args.model.replace('-', '_').replace('.', '_')} and not dola"
    args.out.mkdir(parents=True, exist_ok=True)
    copies = {"identical": [], "damaged": ["--noise", args.noise, "--blocks", args.blocks]}
    rows, differ = [], 0
    for label, extra in copies.items():
        copy = args.out / f"{args.model}-{label}"
        if not copy.exists():
            subprocess.run([sys.executable, "-m", "pytest_steer", "perturb", args.model, str(copy), *extra], check=True,
                           capture_output=True)
        print(f"{label} copy ({' '.join(extra) or 'byte for byte'}):", flush=True)
        full_s, full = run(f"{label}-full", args, copy, quick=False)
        quick_s, quick = run(f"{label}-quick", args, copy, quick=True)
        settled = sum(1 for c in quick.values() if (c.get("verdict") or {}).get("quick") == "replay")
        changed = [cid for cid in sorted(set(full) | set(quick))
                   if (full.get(cid, {}).get("verdict") or {}).get("passed") != (quick.get(cid, {}).get("verdict") or {}).get("passed")]
        for cid in changed:
            print(f"  DIFFERENT VERDICT {cid}: full {full.get(cid, {}).get('status')}, quick {quick.get(cid, {}).get('status')}")
        differ += len(changed)
        passed = sum(1 for c in full.values() if (c.get("verdict") or {}).get("passed"))
        rows.append(f"| {label} | {len(full)} | {passed} | {full_s:.0f} s | {quick_s:.0f} s | {full_s / quick_s:.1f}x "
                    f"| {settled} | {len(full) - len(changed)} of {len(full)} |")
    print(f"\n{args.model}, -m {args.m!r}; cases, verdicts passed (full), wall time full and quick, ratio, "
          "settled by the replay, same verdict:")
    print("| copy | cases | passed | full | quick | full / quick | replay settled | same verdict |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

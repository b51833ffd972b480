"""How far each case is from its FLOP floor, and the suite's wall time cold, fresh and reused.

    python bench/floor_bench.py cases -k smollm2-135m-task_vector-antonym -k smollm2-135m-dola-fact --threads 1
    python bench/floor_bench.py states -m "smollm2_135m and task_vector" --tree /work/old --tree .
    python bench/floor_bench.py states --states fresh --cache ~/.cache/pytest-steer --tree /work/old --tree .

`cases` measures this machine's float32 matmul rate at the given torch thread count, then runs
each selected case alone (recomputed) and prints its forward tokens, counted FLOPs (2 x
non-embedding parameters per forward token, plus 2 x hidden x vocabulary per unembedded
position), measured method time, the floor at the measured rate and their ratio, and where the
time went (the method's phases).

`states` runs `pytest steering_cases -n 2 --dist loadgroup -m EXPR` in each tree, one tree after
the other on the same machine: cold (empty vector and result caches, models already converted),
fresh (the same again with `--steer-rerun` where the tree has it) and reused (nothing changed).
With `--cache DIR` it times fresh (and reused) on a cache whose vectors each tree has already
extracted, so the whole suite is timed fresh without first paying for a cold run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def matmul_rate(threads: int, seconds: float = 2.0) -> float:
    """float32 FLOP/s of a (1024 x 1024) @ (1024 x 4096) product at `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 4096)
    a @ b  # warm-up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * 1024 * 1024 * 4096 * runs / (time.perf_counter() - started)


def cases(args: argparse.Namespace) -> int:
    from pytest_steer.report.markdown import load_cases
    from pytest_steer.run.options import SteerOptions
    from pytest_steer.run.session import SteerSession

    rate = matmul_rate(args.threads)
    print(f"float32 matmul rate at {args.threads} thread(s): {rate / 1e9:.1f} GFLOP/s")
    selected = [c for c in load_cases(Path(args.cases)) if any(k in c.id for k in args.k or [""])]
    cache = Path(args.cache_dir or os.environ.get("PYTEST_STEER_CACHE_DIR", Path.home() / ".cache" / "pytest-steer"))
    options = SteerOptions(cache_dir=cache, baseline_dir=Path("baselines"), update=False, threshold=0.1,
                           tolerance=0.05, min_recovery=None, report_path=None, rerun=True)
    session = SteerSession(options)
    head = f"{'case':58} {'fwd tokens':>10} {'unembeds':>9} {'GFLOP':>8} {'time s':>7} {'floor s':>7} {'ratio':>6}  phases (s)"
    print(head)
    for case in selected:
        handle = session.model(case.model)
        model = handle.model
        head_module = model.get_output_embeddings()
        vocab, hidden = head_module.weight.shape
        embedding = model.get_input_embeddings().weight
        tied = head_module.weight.data_ptr() == embedding.data_ptr()
        params = sum(p.numel() for p in model.parameters()) - embedding.numel() - (0 if tied else head_module.weight.numel())
        unembedded = [0]
        hook = head_module.register_forward_hook(lambda m, i, out: unembedded.__setitem__(0, unembedded[0] + out[..., 0].numel()))
        try:
            result = session.run_case(case)
        finally:
            hook.remove()
        d = result.diagnostics
        positions = unembedded[0]
        if case.method == "dola":  # premature-layer logits go through the unembedding matrix, not the head module
            positions += d["scored_tokens"] * len(result.curves["premature_layers"])
        # a block output reused instead of computed is work not done: count the tokens' blocks actually run
        block_tokens = d["forward_tokens"] - d.get("reused_block_tokens", 0) / handle.adapter.num_layers
        flops = 2 * params * block_tokens + 2 * hidden * vocab * positions
        seconds = result.timing_s["method"]
        floor = flops / rate
        phases = ", ".join(f"{k} {v:.1f}" for k, v in result.timing_s.items() if k not in ("model", "method", "shared_by"))
        print(f"{case.id:58} {d['forward_tokens']:>10,} {positions:>9,} {flops / 1e9:>8,.0f} {seconds:>7.1f} "
              f"{floor:>7.1f} {seconds / floor:>6.1f}  {phases}")
    return 0


def _children_cpu() -> float:
    """User and system CPU seconds of every finished child process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def states(args: argparse.Namespace) -> int:
    for tree in args.tree:
        tree = Path(tree).resolve()
        with tempfile.TemporaryDirectory(prefix="steer-bench-") as scratch:
            if args.cache:
                cache = Path(args.cache).resolve()
            else:
                cache = Path(scratch)
                (cache / "models").symlink_to(Path(args.models or Path.home() / ".cache" / "pytest-steer" / "models"))
            has_rerun = any((tree / "pytest_steer" / sub / "results.py").exists() for sub in (".", "storage"))
            plans = [("cold", []), ("fresh", ["--steer-rerun"] if has_rerun else []), ("reused", [])]
            for state, extra in [p for p in plans if p[0] in args.states]:
                if args.report_dir:
                    report = Path(args.report_dir).resolve() / f"{tree.name}-{state}.json"
                    extra = [*extra, f"--steer-report={report}"]
                select = (["-m", args.m] if args.m else []) + list(args.extra or [])
                command = [sys.executable, "-m", "pytest", "steering_cases", "-n", "2", "--dist", "loadgroup", "-q",
                           "-p", "no:cacheprovider", *select, f"--steer-cache-dir={cache}", *extra]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                cpu_before = _children_cpu()
                started = time.perf_counter()
                done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - started
                cpu = _children_cpu() - cpu_before
                last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-200:]
                # each worker runs torch on one thread, so CPU seconds / 2 is the wall of a run that keeps both busy
                print(f"{tree}  {state:6}  {wall:8.1f} s  cpu {cpu:8.1f} s  wall/(cpu/2) {wall / (cpu / 2):.2f}  {last}",
                      flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cases")
    c.add_argument("-k", action="append", help="run the cases whose id contains this (repeatable: any of them)")
    c.add_argument("--cases", default="steering_cases")
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--cache-dir")
    s = sub.add_parser("states")
    s.add_argument("-m", help="marker expression of the slice (default: the whole suite)")
    s.add_argument("--tree", action="append", required=True, help="a checkout to run (repeat: before, after)")
    s.add_argument("--models", help="converted models folder to share (default: ~/.cache/pytest-steer/models)")
    s.add_argument("--extra", action="append", help="a further pytest argument for every run (e.g. --steer-update)")
    s.add_argument("--report-dir", help="write each run's --steer-report here as <tree folder>-<state>.json")
    s.add_argument("--states", default="cold,fresh,reused",
                   help="which states to time, in this order (fresh alone suits DoLa slices: they extract no vectors)")
    s.add_argument("--cache", help="run on this cache, whose vectors are already extracted, instead of an empty "
                   "scratch one (fresh and reused only: the whole suite fresh without first timing it cold)")
    args = parser.parse_args()
    if args.what == "states":
        if not set(args.states.split(",")) <= {"cold", "fresh", "reused"}:
            parser.error(f"--states: expected a comma list of cold, fresh, reused, got {args.states!r}")
        args.states = args.states.split(",")
        if args.cache and "cold" in args.states:
            parser.error("--cache: a cold state needs an empty cache; use --states fresh or fresh,reused")
    return cases(args) if args.what == "cases" else states(args)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the causal-indirect-effect (CIE) extraction for function vectors.

Times, in one run on one model and task:
  exact        every (layer, head) patch as a batch of last-token rows on a shared prefix cache
  attribution  one forward + backward per prompt (first-order approximation)
  naive        one full forward pass per head per prompt, timed on a subset and scaled up
and prints the ratios and how well the approximation's top heads agree with the exact ranking.

    .venv/bin/python bench/cie_bench.py --model qwen2.5-coder-0.5b --task antonym
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from pytest_steer.methods.function_vector import (
    attribution_cie, exact_cie, mean_head_activations, patch_heads, shuffled_prompts,
)
from pytest_steer.methods.scoring import TokenCounter, score_interventions
from pytest_steer.methods.settings import FunctionVectorSettings
from pytest_steer.models.loader import load_model
from pytest_steer.models.spec import ModelSpec
from pytest_steer.tasks import BUILTIN_DIR, load_task, split_task

def top_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    top_a = set(torch.topk(a.reshape(-1), k).indices.tolist())
    top_b = set(torch.topk(b.reshape(-1), k).indices.tolist())
    return len(top_a & top_b) / k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--task", default="antonym")
    parser.add_argument("--prompts", type=int, default=25, help="label-shuffled prompts for the CIE")
    parser.add_argument("--naive-prompts", type=int, default=1)
    parser.add_argument("--naive-heads", type=int, default=24, help="heads timed per prompt in the naive loop")
    parser.add_argument("--cache-dir", default=os.environ.get("PYTEST_STEER_CACHE_DIR", str(Path.home() / ".cache" / "pytest-steer")))
    args = parser.parse_args()

    handle = load_model(ModelSpec(args.model, "packaged", args.model), Path(args.cache_dir))
    a = handle.adapter
    task = load_task(args.task, BUILTIN_DIR / f"{args.task}.json")
    splits = split_task(task, 40, 80, 0)
    settings = FunctionVectorSettings(n_cie_prompts=args.prompts)
    means = mean_head_activations(handle, splits.demos, settings, 0, TokenCounter())
    data = shuffled_prompts(handle, splits.demos, settings, 0)
    n_heads = a.num_layers * a.num_heads
    print(f"{args.model} / {args.task}: {a.num_layers} layers x {a.num_heads} heads = {n_heads} heads, {args.prompts} prompts, "
          f"torch threads {torch.get_num_threads()}")

    counter = TokenCounter()
    t0 = time.perf_counter()
    exact = exact_cie(handle, means, data, settings, counter)
    t_exact = time.perf_counter() - t0
    print(f"exact:       {t_exact:8.1f} s   forward tokens {counter.tokens:>10,}")

    counter = TokenCounter()
    t0 = time.perf_counter()
    approx = attribution_cie(handle, means, data, counter)
    t_attr = time.perf_counter() - t0
    print(f"attribution: {t_attr:8.1f} s   forward tokens {counter.tokens:>10,} (plus one backward pass per prompt)")

    # naive: the whole prompt once per head, batch of one, on a subset; scaled to every head and prompt
    subset = torch.linspace(0, n_heads - 1, min(args.naive_heads, n_heads)).round().long()
    patch = patch_heads(handle, means, subset)  # intervention j patches head subset[j]
    counter = TokenCounter()
    t0 = time.perf_counter()
    for i in range(args.naive_prompts):
        for j in range(len(subset)):
            score_interventions(handle, data.prompts[i : i + 1], data.targets[i : i + 1], 1,
                                lambda rows, j=j: patch(torch.full_like(rows, j)), batch_size=1, counter=counter,
                                reuse_prefix=False)
    t_naive_part = time.perf_counter() - t0
    scale = (n_heads / len(subset)) * (args.prompts / args.naive_prompts)
    t_naive = t_naive_part * scale
    print(f"naive:       {t_naive:8.1f} s   (measured {t_naive_part:.1f} s for {len(subset)} heads x {args.naive_prompts} prompt(s), "
          f"scaled x{scale:.0f}; forward tokens ~{int(counter.tokens * scale):,})")

    print(f"speed-up exact vs naive:        {t_naive / t_exact:6.1f}x")
    print(f"speed-up attribution vs exact:  {t_exact / t_attr:6.1f}x")
    for k in (2, 8, 16, 32):
        if k <= n_heads:
            print(f"top-{k:<2} heads shared by attribution and exact: {top_overlap(approx, exact, k):.2f}")
    corr = torch.corrcoef(torch.stack([approx.reshape(-1), exact.reshape(-1)]))[0, 1]
    print(f"Pearson correlation of the two CIE maps: {float(corr):.3f}")


if __name__ == "__main__":
    main()

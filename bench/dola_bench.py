"""Benchmark of DoLa scoring on truthful-mc questions: what sharing the prompt saves.

Times, on one model, bucket and set of questions, three ways of scoring every answer:
  per-answer   the prompt encoded again for each answer (one call per answer)
  shared       the prompt encoded once, all answers as one batch on its cache
  context      as shared, with the instruction and demonstrations encoded once per run
and prints forward tokens, seconds per question, DoLa MC1 and the largest score difference.
The three ways compute the same numbers up to float rounding, so differences in MC1 or in
the chosen premature layers measure how much rounding alone moves DoLa on this model.

    .venv/bin/python bench/dola_bench.py --model qwen2.5-coder-0.5b --bucket lower --questions 10
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from pytest_steer.methods.dola import AnswerScores, encode_context, mc_metrics, score_answers
from pytest_steer.methods.settings import DolaSettings
from pytest_steer.models.loader import load_model
from pytest_steer.models.spec import ModelSpec
from pytest_steer.tasks import BUILTIN_DIR, load_task
from pytest_steer.tasks.prompts import mc_answer, mc_context, mc_prompt

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--bucket", default="lower")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--cache-dir", default=os.environ.get("PYTEST_STEER_CACHE_DIR", str(Path.home() / ".cache" / "pytest-steer")))
    args = parser.parse_args()

    handle = load_model(ModelSpec(args.model, "packaged", args.model), Path(args.cache_dir))
    settings = DolaSettings(bucket=args.bucket)
    questions = load_task("truthful-mc", BUILTIN_DIR / "truthful-mc.json").items[: args.questions]
    work = [(mc_prompt(q.question), [mc_answer(a) for a in q.correct + q.incorrect]) for q in questions]
    n_true = [len(q.correct) for q in questions]
    print(f"{args.model}, bucket {args.bucket}, {len(work)} questions, {sum(len(a) for _, a in work)} answers, "
          f"torch threads {torch.get_num_threads()}")

    def per_answer(prompt: str, answers: list[str]) -> AnswerScores:
        parts = [score_answers(handle, prompt, [a], settings) for a in answers]
        return AnswerScores([p.unsteered[0] for p in parts], [p.dola[0] for p in parts], [p.premature[0] for p in parts],
                            sum(p.forward_tokens for p in parts))

    context = encode_context(handle, mc_context())
    ways = {
        "per-answer": per_answer,
        "shared": lambda p, a: score_answers(handle, p, a, settings),
        "context": lambda p, a: score_answers(handle, p, a, settings, context),
    }
    results: dict[str, list[AnswerScores]] = {}
    for name, run in ways.items():
        started = time.perf_counter()
        results[name] = [run(prompt, answers) for prompt, answers in work]
        seconds = time.perf_counter() - started
        tokens = sum(r.forward_tokens for r in results[name]) + (len(context.ids) if name == "context" else 0)
        mc1 = sum(mc_metrics(r.dola[:k], r.dola[k:]).mc1 for r, k in zip(results[name], n_true)) / len(work)
        print(f"  {name:<11} {seconds / len(work):6.2f} s/question   forward tokens {tokens:7,d}   DoLa MC1 {mc1:.3f}")
    for name in ("shared", "context"):
        worst = max(
            abs(x - y)
            for ref, got in zip(results["per-answer"], results[name])
            for x, y in zip(ref.unsteered + ref.dola, got.unsteered + got.dola)
        )
        same = sum(r.premature == g.premature for r, g in zip(results["per-answer"], results[name]))
        print(f"  {name} vs per-answer: largest score difference {worst:.2e}, same premature layers on {same}/{len(work)} questions")


if __name__ == "__main__":
    main()

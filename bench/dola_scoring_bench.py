"""Where DoLa's time goes on a real model: the forward pass, the layer logits, the divergence and contrast.

    python bench/dola_scoring_bench.py [--model gemma3-270m --questions 6 --threads 1]

Scores the first questions of the packaged truthful-mc task under the three default variants
(lower, upper, upper with the final norm) through the suite's own `score_answers_many`, at one
torch thread (an xdist worker's share) by default, and prints its phases: the forward pass,
the layer logits (the candidate layers' states gathered and unembedded, a matmul over the
vocabulary) and the per-position JSD, choice and contrast.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from pytest_steer.methods.base import Phases
from pytest_steer.methods.dola import encode_context, score_answers_many
from pytest_steer.methods.settings import DolaSettings
from pytest_steer.models.loader import load_model
from pytest_steer.models.spec import ModelSpec
from pytest_steer.tasks import BUILTIN_DIR, load_task
from pytest_steer.tasks.prompts import mc_answer, mc_context, mc_prompt

VARIANTS = [DolaSettings(bucket="lower"), DolaSettings(bucket="upper"), DolaSettings(bucket="upper", premature_norm=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m", help="a packaged model")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache_dir or os.environ.get("PYTEST_STEER_CACHE_DIR", Path.home() / ".cache" / "pytest-steer"))
    handle = load_model(ModelSpec(args.model, "packaged", args.model), cache)
    questions = load_task("truthful-mc", BUILTIN_DIR / "truthful-mc.json").items[: args.questions]
    context = encode_context(handle, mc_context())
    clock = Phases()
    for q in questions:
        score_answers_many(handle, mc_prompt(q.question), [mc_answer(a) for a in q.correct + q.incorrect], VARIANTS,
                           context, clock)
    total = sum(clock.seconds.values())
    print(f"{args.model}, {len(questions)} truthful-mc questions x {len(VARIANTS)} variants, {args.threads} thread(s)")
    for phase, seconds in clock.seconds.items():
        print(f"{phase:24} {seconds:7.2f} s  {seconds / total:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tests for pytest_steer.tasks.prompts: word-pair templates, ICL prompts and DoLa's prompts."""

from __future__ import annotations

import json
import random

from pytest_steer.tasks import BUILTIN_DIR, Pair, load_task
from pytest_steer.tasks.prompts import (
    DEMONSTRATIONS,
    INSTRUCTION,
    completion_text,
    few_shot_prompt,
    icl_prompts,
    mc_answer,
    mc_context,
    mc_prompt,
    target_text,
    zero_shot_prompt,
)

POOL = tuple(Pair(f"x{i}", f"y{i}") for i in range(8))


# ---------------------------------------------------------------- word pairs


def test_zero_shot_prompt() -> None:
    assert zero_shot_prompt("q") == "Q: q\nA:"


def test_few_shot_prompt_exact_format() -> None:
    demos = [Pair("x1", "y1"), Pair("x2", "y2")]
    assert few_shot_prompt(demos, "q") == "Q: x1\nA: y1\n\nQ: x2\nA: y2\n\nQ: q\nA:"
    assert few_shot_prompt(tuple(demos), "q") == few_shot_prompt(demos, "q")


def test_few_shot_prompt_keeps_order_and_no_demos() -> None:
    assert few_shot_prompt([Pair("b", "2"), Pair("a", "1")], "c").startswith("Q: b\nA: 2\n\nQ: a")
    assert few_shot_prompt([], "q") == zero_shot_prompt("q")


def test_target_text_has_leading_space() -> None:
    assert target_text(Pair("hot", "cold")) == " cold"


def test_icl_prompts_draw_shots_from_the_pool_never_the_query() -> None:
    queries = [POOL[0], POOL[3], Pair("new", "ans")]
    prompts = icl_prompts(POOL, queries, 7, random.Random(0))  # 7 of 8: the query's own pair must be the one left out
    assert len(prompts) == 3
    for prompt, query in zip(prompts, queries):
        shots, last = prompt.rsplit("Q: ", 1)
        assert last == f"{query.input}\nA:"
        assert shots.count("Q: ") == 7
        assert f"Q: {query.input}\n" not in shots
        used = {line[3:] for line in shots.splitlines() if line.startswith("Q: ")}
        assert used <= {p.input for p in POOL}
        for p in POOL:  # every shot keeps its own answer
            if p.input in used:
                assert f"Q: {p.input}\nA: {p.output}\n\n" in shots


def test_icl_prompts_are_reproducible_with_the_rng_seed() -> None:
    a = icl_prompts(POOL, POOL[:4], 3, random.Random("icl-1"))
    assert a == icl_prompts(POOL, POOL[:4], 3, random.Random("icl-1"))
    assert a != icl_prompts(POOL, POOL[:4], 3, random.Random("icl-2"))


# ---------------------------------------------------------------- DoLa


def test_mc_prompt_follows_the_protocol() -> None:
    prompt = mc_prompt("Is it so?")
    assert prompt.startswith(INSTRUCTION + "\n\n")
    assert prompt == mc_context() + "Q: Is it so?\nA:"
    assert prompt.endswith("\n\nQ: Is it so?\nA:") and prompt.count("Q: ") == len(DEMONSTRATIONS) + 1 == 7
    for question, answer in DEMONSTRATIONS:
        assert f"Q: {question}\nA: {answer}\n\n" in mc_context()


def test_mc_answer_and_completion_text() -> None:
    assert mc_answer("Yes") == " Yes." and mc_answer(" No. ") == " No."
    assert completion_text("The sky is ", "blue.") == ("The sky is", " blue.")
    assert completion_text("The sky is", "  blue. ") == ("The sky is", " blue.")


def test_demonstrations_are_not_test_questions() -> None:
    asked = {q.question.lower() for q in load_task("truthful-mc", BUILTIN_DIR / "truthful-mc.json").items}
    raw = json.loads((BUILTIN_DIR / "truthful-mc.json").read_text(encoding="utf-8"))
    assert len(asked) == len(raw)
    assert not asked & {q.lower() for q, _ in DEMONSTRATIONS}

"""The multiple-choice datasets written for DoLa (issue: DoLa method) are well-formed."""

from __future__ import annotations

import json
from pathlib import Path

TASKS = Path(__file__).resolve().parent.parent / "steering_cases" / "tasks"


def _clean(text: object) -> bool:
    return isinstance(text, str) and text == text.strip() and text != "" and "\n" not in text


def test_truthful_mc_is_well_formed() -> None:
    items = json.loads((TASKS / "truthful-mc.json").read_text(encoding="utf-8"))
    assert len(items) >= 80
    questions = [i["question"] for i in items]
    assert len(set(questions)) == len(questions)
    for item in items:
        assert set(item) == {"question", "best_answer", "correct_answers", "incorrect_answers"}
        assert len(item["correct_answers"]) >= 2 and len(item["incorrect_answers"]) >= 2
        assert item["best_answer"] in item["correct_answers"]
        assert not set(item["correct_answers"]) & set(item["incorrect_answers"])
        assert all(_clean(t) for t in [item["question"], *item["correct_answers"], *item["incorrect_answers"]])


def test_fact_completion_is_well_formed() -> None:
    items = json.loads((TASKS / "fact-completion.json").read_text(encoding="utf-8"))
    assert len(items) >= 80
    prefixes = [i["prefix"] for i in items]
    assert len(set(prefixes)) == len(prefixes)
    for item in items:
        assert set(item) == {"prefix", "completion", "contradictions"}
        assert len(item["contradictions"]) == 3 and len(set(item["contradictions"])) == 3
        assert item["completion"] not in item["contradictions"]
        assert all(_clean(t) for t in [item["prefix"], item["completion"], *item["contradictions"]])


def test_demonstrations_are_not_test_questions() -> None:
    from pytest_steer.methods.dola_method import DEMONSTRATIONS

    items = json.loads((TASKS / "truthful-mc.json").read_text(encoding="utf-8"))
    asked = {i["question"].lower() for i in items}
    assert not asked & {q.lower() for q, _ in DEMONSTRATIONS}

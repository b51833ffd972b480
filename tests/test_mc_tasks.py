"""Loaders of the DoLa task layouts: ours (JSON) and the study's CSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_steer.mc_tasks import load_completions, load_mc_questions
from pytest_steer.tasks import TaskError

TASKS = Path(__file__).resolve().parent.parent / "steering_cases" / "tasks"


def test_builtin_files_load() -> None:
    questions = load_mc_questions(TASKS / "truthful-mc.json")
    assert len(questions) >= 80 and all(len(q.correct) >= 2 and len(q.incorrect) >= 2 for q in questions)
    passages = load_completions(TASKS / "fact-completion.json")
    assert len(passages) >= 80 and all(len(p.contradictions) == 3 for p in passages)


def test_truthfulqa_csv_layout(tmp_path: Path) -> None:
    path = tmp_path / "tqa.csv"
    path.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        'Adversarial,Misc,Do bulls hate red?,No,"No; Bulls are colour-blind to red","Yes; Red makes bulls angry",x\n',
        encoding="utf-8",
    )
    (q,) = load_mc_questions(path)
    assert q.question == "Do bulls hate red?"
    assert q.correct == ("No", "Bulls are colour-blind to red")  # best answer first, not repeated
    assert q.incorrect == ("Yes", "Red makes bulls angry")


def test_factor_csv_layout(tmp_path: Path) -> None:
    path = tmp_path / "factor.csv"
    path.write_text("full_prefix,doc_id,completion,contradiction_0,contradiction_1,contradiction_2\n"
                    "The capital of France is,1,Paris.,Lyon.,Nice.,Lille.\n", encoding="utf-8")
    (p,) = load_completions(path)
    assert p.prefix == "The capital of France is" and p.completion == "Paris."
    assert p.contradictions == ("Lyon.", "Nice.", "Lille.")


def test_errors_name_the_file_row_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Best Answer,Correct Answers\nq,a,b\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad\.csv: missing CSV column\(s\) Incorrect Answers"):
        load_mc_questions(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\nx,,a,b,c\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"empty\.csv: row 2: field 'completion'"):
        load_completions(empty)
    js = tmp_path / "q.json"
    js.write_text('[{"question": "q", "best_answer": "a", "correct_answers": "a", "incorrect_answers": []}]')
    with pytest.raises(TaskError, match=r"q\.json: item 0: field 'correct_answers' must be a list"):
        load_mc_questions(js)


def test_dola_task_layout_is_detected_from_the_fields(tmp_path: Path) -> None:
    from pytest_steer.mc_tasks import load_dola_task

    mc = load_dola_task("truthful-mc", TASKS / "truthful-mc.json")
    completion = load_dola_task("fact-completion", TASKS / "fact-completion.json")
    assert (mc.kind, completion.kind) == ("mc", "completion")
    assert mc.data_hash() != completion.data_hash() and len(mc.data_hash()) == 64
    csv_path = tmp_path / "factor.csv"
    csv_path.write_text("full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\nThe sky is,blue.,green.,red.,brown.\n")
    assert load_dola_task("factor", csv_path).kind == "completion"
    words = tmp_path / "pairs.json"
    words.write_text('[{"input": "hot", "output": "cold"}]')
    with pytest.raises(TaskError, match="not a DoLa task") as info:
        load_dola_task("pairs", words)
    assert str(words) in str(info.value) and "question" in str(info.value) and "prefix" in str(info.value)

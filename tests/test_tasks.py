"""Tests for pytest_steer.tasks: built-in datasets, parsing, splits and prompt templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_steer.tasks import (
    Pair,
    Task,
    TaskError,
    few_shot_prompt,
    load_task,
    parse_pairs,
    split_task,
    target_text,
    zero_shot_prompt,
)

TASKS_DIR = Path(__file__).resolve().parent.parent / "steering_cases" / "tasks"
BUILTIN = ["antonym", "country-capital", "present-past", "english-french", "singular-plural", "capitalize"]
MIN_ITEMS = {"country-capital": 150}


def _task(n: int, name: str = "t") -> Task:
    return Task(name, tuple(Pair(f"in{i}", f"out{i}") for i in range(n)), f"/src/{name}.json")


# ---------------------------------------------------------------- built-in datasets


def test_builtin_task_files_are_present():
    present = {p.stem for p in TASKS_DIR.glob("*.json")}
    assert set(BUILTIN) <= present


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_task_is_clean(name):
    path = TASKS_DIR / f"{name}.json"
    task = load_task(name, path)
    assert task.name == name
    assert task.source == str(path)
    assert len(task.pairs) >= MIN_ITEMS.get(name, 100)

    lowered = [p.input.lower() for p in task.pairs]
    dups = sorted({x for x in lowered if lowered.count(x) > 1})
    assert not dups, f"{name}: duplicate inputs (case-insensitive): {dups}"

    # The raw file, not just what the loader made of it, must be clean.
    raw = json.loads(path.read_text(encoding="utf-8"))
    items = raw.items() if isinstance(raw, dict) else [(e["input"], e["output"]) for e in raw]
    for inp, out in items:
        for text in (inp, out):
            assert isinstance(text, str) and text, f"{name}: empty value in {inp!r} -> {out!r}"
            assert text == text.strip(), f"{name}: unstripped value {text!r}"
            assert "\n" not in text and "\r" not in text, f"{name}: multi-line value {text!r}"
        assert inp != out, f"{name}: input equals output: {inp!r}"


def test_capitalize_outputs_are_capitalized_inputs():
    task = load_task("capitalize", TASKS_DIR / "capitalize.json")
    wrong = [p for p in task.pairs if p.output != p.input.capitalize()]
    assert not wrong


# ---------------------------------------------------------------- parse_pairs


def test_list_and_object_layouts_give_same_pairs():
    as_list = [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]
    as_obj = {"hot": "cold", "up": "down"}
    expected = [Pair("hot", "cold"), Pair("up", "down")]
    assert parse_pairs(as_list, "src.json") == expected
    assert parse_pairs(as_obj, "src.json") == expected


def test_values_are_stripped():
    assert parse_pairs({" hot ": "cold  "}, "s") == [Pair("hot", "cold")]


def test_load_task_reads_both_layouts(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps([{"input": "x", "output": "y"}]), encoding="utf-8")
    b.write_text(json.dumps({"x": "y"}), encoding="utf-8")
    assert load_task("a", a).pairs == load_task("b", b).pairs == (Pair("x", "y"),)


@pytest.mark.parametrize(
    "data, fragments",
    [
        ([{"input": "a", "output": "b"}, {"input": "c"}], ["item 1", "missing field 'output'"]),
        ([{"output": "b"}], ["item 0", "missing field 'input'"]),
        ([{"input": "a", "output": 3}], ["item 0", "'output'", "must be a string", "int"]),
        ({"a": ["b"]}, ["entry 'a'", "'output'", "must be a string", "list"]),
        ([{"input": "", "output": "b"}], ["item 0", "'input'", "empty"]),
        ([{"input": "a", "output": "   "}], ["item 0", "'output'", "empty"]),
        ({"a": ""}, ["entry 'a'", "'output'", "empty"]),
        ([{"input": "a", "output": "b\nc"}], ["item 0", "'output'", "single line"]),
        (
            [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}, {"input": "a", "output": "e"}],
            ["item 2", "duplicate input 'a'"],
        ),
        ([{"input": "a", "output": "b"}, {"input": " a ", "output": "e"}], ["item 1", "duplicate input 'a'"]),
        (["a", "b"], ["item 0", "expected an object", "str"]),
        ("hello", ["expected a JSON list", "str"]),
        (42, ["expected a JSON list", "int"]),
        ([], ["no items"]),
        ({}, ["no items"]),
    ],
)
def test_parse_errors_name_source_and_field(data, fragments):
    with pytest.raises(TaskError) as info:
        parse_pairs(data, "/data/my-task.json")
    message = str(info.value)
    assert "/data/my-task.json" in message
    for fragment in fragments:
        assert fragment in message


def test_load_task_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"input": "a", "output": ', encoding="utf-8")
    with pytest.raises(TaskError) as info:
        load_task("broken", path)
    assert str(path) in str(info.value)
    assert "not valid JSON" in str(info.value)


def test_load_task_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(TaskError) as info:
        load_task("nope", path)
    assert "nope" in str(info.value)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


def test_load_task_invalid_item_names_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"input": "a"}]), encoding="utf-8")
    with pytest.raises(TaskError) as info:
        load_task("bad", path)
    assert str(path) in str(info.value) and "output" in str(info.value)


# ---------------------------------------------------------------- split_task


def test_split_is_deterministic_for_a_seed():
    task = _task(60)
    assert split_task(task, 10, 20, seed=3) == split_task(task, 10, 20, seed=3)


def test_split_differs_between_seeds():
    task = _task(60)
    a = split_task(task, 10, 20, seed=0)
    b = split_task(task, 10, 20, seed=1)
    assert (a.test, a.dev, a.demos) != (b.test, b.dev, b.demos)
    assert a.seed == 0 and b.seed == 1


def test_split_sizes_disjoint_and_covering():
    task = _task(57)
    s = split_task(task, n_dev=12, n_test=25, seed=7)
    assert len(s.dev) == 12
    assert len(s.test) == 25
    assert len(s.demos) == 57 - 12 - 25
    demos, dev, test = set(s.demos), set(s.dev), set(s.test)
    assert not (demos & dev) and not (demos & test) and not (dev & test)
    assert demos | dev | test == set(task.pairs)


def test_split_exactly_enough_items():
    task = _task(40)
    s = split_task(task, n_dev=10, n_test=20, seed=0, min_demos=10)
    assert len(s.demos) == 10


def test_split_too_small_names_counts():
    task = _task(39, name="tiny")
    with pytest.raises(TaskError) as info:
        split_task(task, n_dev=10, n_test=20, seed=0, min_demos=10)
    message = str(info.value)
    for fragment in ("tiny", task.source, "39", "n_dev=10", "n_test=20", "10 demonstrations", "need 40"):
        assert fragment in message


# ---------------------------------------------------------------- prompts


def test_zero_shot_prompt():
    assert zero_shot_prompt("q") == "Q: q\nA:"


def test_few_shot_prompt_exact_format():
    demos = [Pair("x1", "y1"), Pair("x2", "y2")]
    assert few_shot_prompt(demos, "q") == "Q: x1\nA: y1\n\nQ: x2\nA: y2\n\nQ: q\nA:"
    assert few_shot_prompt(tuple(demos), "q") == few_shot_prompt(demos, "q")


def test_few_shot_prompt_keeps_order_and_no_demos():
    assert few_shot_prompt([Pair("b", "2"), Pair("a", "1")], "c").startswith("Q: b\nA: 2\n\nQ: a")
    assert few_shot_prompt([], "q") == zero_shot_prompt("q")


def test_target_text_has_leading_space():
    assert target_text(Pair("hot", "cold")) == " cold"


# ---------------------------------------------------------------- data_hash


def test_data_hash_is_stable():
    assert _task(5).data_hash() == _task(5).data_hash()
    assert len(_task(5).data_hash()) == 64


def test_data_hash_changes_when_any_item_changes():
    base = _task(5)
    h = base.data_hash()
    for i in range(5):
        for changed in (Pair(base.pairs[i].input + "x", base.pairs[i].output), Pair(base.pairs[i].input, base.pairs[i].output + "x")):
            pairs = list(base.pairs)
            pairs[i] = changed
            assert Task(base.name, tuple(pairs), base.source).data_hash() != h
    # Order, removal and addition also change it.
    assert Task("t", tuple(reversed(base.pairs)), base.source).data_hash() != h
    assert Task("t", base.pairs[:-1], base.source).data_hash() != h
    assert Task("t", base.pairs + (Pair("new", "item"),), base.source).data_hash() != h


def test_data_hash_ignores_name_and_source():
    base = _task(5)
    assert Task("other", base.pairs, "/elsewhere.json").data_hash() == base.data_hash()

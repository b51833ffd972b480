"""Tests for pytest_steer.tasks.data: built-in files, readers, layout detection, splits and the data hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_steer.tasks import (
    BUILTIN_DIR,
    Completion,
    MCQuestion,
    Pair,
    Task,
    TaskError,
    load_task,
    require_kind,
    sample_items,
    split_task,
)
from pytest_steer.tasks.data import (
    read_completions,
    read_csv_task,
    read_json_task,
    read_pairs,
    read_questions,
    text_field,
)

ROOT = Path(__file__).resolve().parent.parent
WORD_TASKS = ["antonym", "country-capital", "present-past", "english-french", "singular-plural", "capitalize"]
DOLA_TASKS = {"truthful-mc": "mc", "fact-completion": "completion"}
MIN_ITEMS = {"country-capital": 150}


def _task(n: int, name: str = "t") -> Task:
    return Task(name, "pairs", tuple(Pair(f"in{i}", f"out{i}") for i in range(n)), f"/src/{name}.json")


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _clean(text: object) -> bool:
    return isinstance(text, str) and text == text.strip() and text != "" and "\n" not in text and "\r" not in text


# ---------------------------------------------------------------- built-in task files


def test_builtin_dir_is_inside_the_package_and_holds_every_task() -> None:
    assert BUILTIN_DIR == ROOT / "pytest_steer" / "tasks" / "builtin"
    present = {p.stem for p in BUILTIN_DIR.glob("*.json")}
    assert set(WORD_TASKS) | set(DOLA_TASKS) <= present


@pytest.mark.parametrize("name", WORD_TASKS)
def test_builtin_word_task_is_clean(name: str) -> None:
    path = BUILTIN_DIR / f"{name}.json"
    task = load_task(name, path)
    assert (task.name, task.kind, task.source) == (name, "pairs", str(path))
    assert len(task.pairs) >= MIN_ITEMS.get(name, 100)

    lowered = [p.input.lower() for p in task.pairs]
    dups = sorted({x for x in lowered if lowered.count(x) > 1})
    assert not dups, f"{name}: duplicate inputs (case-insensitive): {dups}"

    # The raw file, not just what the loader made of it, must be clean.
    raw = json.loads(path.read_text(encoding="utf-8"))
    items = raw.items() if isinstance(raw, dict) else [(e["input"], e["output"]) for e in raw]
    for inp, out in items:
        assert _clean(inp) and _clean(out), f"{name}: unclean value in {inp!r} -> {out!r}"
        assert inp != out, f"{name}: input equals output: {inp!r}"


def test_capitalize_outputs_are_capitalized_inputs() -> None:
    task = load_task("capitalize", BUILTIN_DIR / "capitalize.json")
    assert not [p for p in task.pairs if p.output != p.input.capitalize()]


def test_builtin_dola_tasks_load_with_their_kind() -> None:
    mc = load_task("truthful-mc", BUILTIN_DIR / "truthful-mc.json")
    assert mc.kind == "mc" and len(mc.items) >= 80
    assert all(isinstance(q, MCQuestion) and len(q.correct) >= 2 and len(q.incorrect) >= 2 for q in mc.items)
    passages = load_task("fact-completion", BUILTIN_DIR / "fact-completion.json")
    assert passages.kind == "completion" and len(passages.items) >= 80
    assert all(isinstance(p, Completion) and len(p.contradictions) == 3 for p in passages.items)


def test_truthful_mc_file_is_well_formed() -> None:
    items = json.loads((BUILTIN_DIR / "truthful-mc.json").read_text(encoding="utf-8"))
    questions = [i["question"] for i in items]
    assert len(set(questions)) == len(questions) >= 80
    for item in items:
        assert set(item) == {"question", "best_answer", "correct_answers", "incorrect_answers"}
        assert len(item["correct_answers"]) >= 2 and len(item["incorrect_answers"]) >= 2
        assert item["best_answer"] in item["correct_answers"]
        assert not set(item["correct_answers"]) & set(item["incorrect_answers"])
        assert all(_clean(t) for t in [item["question"], *item["correct_answers"], *item["incorrect_answers"]])


def test_fact_completion_file_is_well_formed() -> None:
    items = json.loads((BUILTIN_DIR / "fact-completion.json").read_text(encoding="utf-8"))
    prefixes = [i["prefix"] for i in items]
    assert len(set(prefixes)) == len(prefixes) >= 80
    for item in items:
        assert set(item) == {"prefix", "completion", "contradictions"}
        assert len(item["contradictions"]) == 3 and len(set(item["contradictions"])) == 3
        assert item["completion"] not in item["contradictions"]
        assert all(_clean(t) for t in [item["prefix"], item["completion"], *item["contradictions"]])


def test_mc_question_puts_the_best_answer_first() -> None:
    raw = json.loads((BUILTIN_DIR / "truthful-mc.json").read_text(encoding="utf-8"))
    task = load_task("truthful-mc", BUILTIN_DIR / "truthful-mc.json")
    for item, q in zip(raw, task.items, strict=True):
        assert q.question == item["question"] and q.correct[0] == item["best_answer"]
        assert set(q.correct) == set(item["correct_answers"]) and len(q.correct) == len(set(q.correct))
        assert q.incorrect == tuple(item["incorrect_answers"])


# ---------------------------------------------------------------- text_field


def test_text_field_strips_and_checks() -> None:
    assert text_field("  a b ", "w", "f") == "a b"
    assert text_field("a\nb", "w", "f") == "a\nb"  # multi-line allowed unless asked
    with pytest.raises(TaskError, match=r"^w: field 'f' must be a single line$"):
        text_field("a\nb", "w", "f", single_line=True)
    with pytest.raises(TaskError, match=r"^w: field 'f' is empty$"):
        text_field(" \t", "w", "f")
    with pytest.raises(TaskError, match=r"^w: field 'f' must be a string, got NoneType$"):
        text_field(None, "w", "f")


# ---------------------------------------------------------------- word pairs


def test_list_and_object_layouts_give_same_pairs() -> None:
    as_list = [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}]
    as_obj = {"hot": "cold", "up": "down"}
    expected = (Pair("hot", "cold"), Pair("up", "down"))
    assert read_pairs(as_list, "src.json") == expected
    assert read_pairs(as_obj, "src.json") == expected


def test_pair_values_are_stripped() -> None:
    assert read_pairs({" hot ": "cold  "}, "s") == (Pair("hot", "cold"),)


def test_load_task_reads_both_pair_layouts(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", [{"input": "x", "output": "y"}])
    b = _write(tmp_path / "b.json", {"x": "y"})
    assert load_task("a", a).pairs == load_task("b", b).pairs == (Pair("x", "y"),)
    assert load_task("a", a).kind == load_task("b", b).kind == "pairs"


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
        ({"a\nb": "c"}, ["'input'", "single line"]),
        (
            [{"input": "a", "output": "b"}, {"input": "c", "output": "d"}, {"input": "a", "output": "e"}],
            ["item 2", "duplicate input 'a'"],
        ),
        ([{"input": "a", "output": "b"}, {"input": " a ", "output": "e"}], ["item 1", "duplicate input 'a'"]),
        (["a", "b"], ["item 0", "expected an object", "str"]),
        ("hello", ["expected a JSON list", "str"]),
        (42, ["expected a JSON list", "int"]),
    ],
)
def test_pair_errors_name_source_and_field(data: object, fragments: list[str]) -> None:
    with pytest.raises(TaskError) as info:
        read_pairs(data, "/data/my-task.json")
    message = str(info.value)
    assert message.startswith("/data/my-task.json: ")
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("data", [[], {}])
def test_load_task_rejects_a_file_without_items(tmp_path: Path, data: object) -> None:
    path = _write(tmp_path / "empty.json", data)
    with pytest.raises(TaskError, match="the task has no items") as info:
        load_task("empty", path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data, fragment", [("hello", "expected a JSON list"), (["a"], "item 0: expected an object")])
def test_load_task_passes_pair_errors_through_with_the_path(tmp_path: Path, data: object, fragment: str) -> None:
    path = _write(tmp_path / "odd.json", data)
    with pytest.raises(TaskError, match=fragment) as info:
        load_task("odd", path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_task_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"input": "a", "output": ', encoding="utf-8")
    with pytest.raises(TaskError) as info:
        load_task("broken", path)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)


def test_load_task_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(TaskError) as info:
        load_task("nope", path)
    message = str(info.value)
    assert "task 'nope'" in message and str(path) in message and "does not exist" in message


def test_load_task_accepts_a_string_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.json", {"x": "y"})
    assert load_task("s", str(path)).pairs == (Pair("x", "y"),)  # type: ignore[arg-type]


def test_load_task_invalid_item_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.json", [{"input": "a"}])
    with pytest.raises(TaskError) as info:
        load_task("bad", path)
    assert str(path) in str(info.value) and "output" in str(info.value)


# ---------------------------------------------------------------- multiple-choice questions and completions


def test_read_questions_json_layout() -> None:
    data = [{"question": " Do bulls hate red? ", "best_answer": "No", "correct_answers": ["No", "They are colour-blind", " "],
             "incorrect_answers": ["Yes", 3]}]
    (q,) = read_questions(data, "q.json")
    assert q == MCQuestion("Do bulls hate red?", ("No", "They are colour-blind"), ("Yes",))  # blanks and non-strings dropped


def test_read_questions_errors_name_item_and_field() -> None:
    good = {"question": "q", "best_answer": "a", "correct_answers": ["a"], "incorrect_answers": ["b"]}
    with pytest.raises(TaskError, match=r"^q\.json: item 1: field 'correct_answers' must be a list"):
        read_questions([good, {**good, "correct_answers": "a"}], "q.json")
    with pytest.raises(TaskError, match=r"^q\.json: item 0: field 'incorrect answers' needs at least one answer, got none"):
        read_questions([{**good, "incorrect_answers": ["  "]}], "q.json")
    with pytest.raises(TaskError, match=r"^q\.json: item 0: field 'question' is empty"):
        read_questions([{**good, "question": ""}], "q.json")
    with pytest.raises(TaskError, match=r"^q\.json: item 0: field 'best_answer' must be a string"):
        read_questions([{k: v for k, v in good.items() if k != "best_answer"}], "q.json")
    with pytest.raises(TaskError, match=r"^q\.json: item 1: expected an object"):
        read_questions([good, "q"], "q.json")


def test_read_completions_json_layout_and_errors() -> None:
    (c,) = read_completions([{"prefix": "The sky is ", "completion": " blue.", "contradictions": ["green.", "red."]}], "c.json")
    assert c == Completion("The sky is", "blue.", ("green.", "red."))
    with pytest.raises(TaskError, match=r"^c\.json: item 0: expected an object with a non-empty list 'contradictions'"):
        read_completions([{"prefix": "p", "completion": "c", "contradictions": []}], "c.json")
    with pytest.raises(TaskError, match=r"^c\.json: item 0: field 'contradictions' is empty"):
        read_completions([{"prefix": "p", "completion": "c", "contradictions": ["x", ""]}], "c.json")
    with pytest.raises(TaskError, match=r"^c\.json: item 0: field 'completion' must be a string"):
        read_completions([{"prefix": "p", "contradictions": ["x"]}], "c.json")


def test_truthfulqa_csv_layout(tmp_path: Path) -> None:
    path = tmp_path / "tqa.csv"
    path.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        'Adversarial,Misc,Do bulls hate red?,No,"No; Bulls are colour-blind to red","Yes; Red makes bulls angry",x\n',
        encoding="utf-8",
    )
    kind, (q,) = read_csv_task(path)
    assert kind == "mc"
    assert q.question == "Do bulls hate red?"
    assert q.correct == ("No", "Bulls are colour-blind to red")  # best answer first, not repeated
    assert q.incorrect == ("Yes", "Red makes bulls angry")
    task = load_task("tqa", path)
    assert task.kind == "mc" and task.items == (q,)


def test_factor_csv_layout(tmp_path: Path) -> None:
    path = tmp_path / "factor.csv"
    path.write_text("full_prefix,doc_id,completion,contradiction_0,contradiction_1,contradiction_2\n"
                    "The capital of France is,1,Paris.,Lyon.,Nice.,Lille.\n", encoding="utf-8")
    kind, (p,) = read_csv_task(path)
    assert kind == "completion"
    assert p.prefix == "The capital of France is" and p.completion == "Paris."
    assert p.contradictions == ("Lyon.", "Nice.", "Lille.")
    assert load_task("factor", path).items == (p,)


def test_csv_errors_name_the_file_row_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("Question,Best Answer,Correct Answers\nq,a,b\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"bad\.csv: missing CSV column\(s\) Incorrect Answers"):
        load_task("bad", bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\nx,,a,b,c\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"empty\.csv: row 2: field 'completion' is empty"):
        load_task("empty", empty)
    third = tmp_path / "third.csv"
    third.write_text("Question,Best Answer,Correct Answers,Incorrect Answers\nq,a,a,b\nq2,a,a,;\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"third\.csv: row 3: field 'incorrect answers' needs at least one answer"):
        load_task("third", third)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"other\.csv: CSV columns match neither TruthfulQA .* nor FACTOR"):
        load_task("other", other)
    header_only = tmp_path / "header.csv"
    header_only.write_text("full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\n", encoding="utf-8")
    with pytest.raises(TaskError, match=r"header\.csv: the task has no items"):
        load_task("header", header_only)


def test_json_layout_errors_name_the_file(tmp_path: Path) -> None:
    js = _write(tmp_path / "q.json", [{"question": "q", "best_answer": "a", "correct_answers": "a", "incorrect_answers": []}])
    with pytest.raises(TaskError, match=r"q\.json: item 0: field 'correct_answers' must be a list"):
        load_task("q", js)


def test_layout_is_detected_from_the_fields(tmp_path: Path) -> None:
    mc = _write(tmp_path / "mc.json", [{"question": "q", "best_answer": "a", "correct_answers": ["a"], "incorrect_answers": ["b"]}])
    comp = _write(tmp_path / "c.json", [{"prefix": "p", "completion": "c", "contradictions": ["x"]}])
    pairs = _write(tmp_path / "p.json", [{"input": "hot", "output": "cold"}])
    assert read_json_task(mc) == ("mc", (MCQuestion("q", ("a",), ("b",)),))
    assert read_json_task(comp) == ("completion", (Completion("p", "c", ("x",)),))
    assert read_json_task(pairs) == ("pairs", (Pair("hot", "cold"),))
    upper = tmp_path / "UPPER.CSV"  # the suffix is matched case-insensitively
    upper.write_text("full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\nThe sky is,blue.,green.,red.,brown.\n")
    assert load_task("upper", upper).kind == "completion"


def test_pairs_property_refuses_other_kinds() -> None:
    task = Task("mc", "mc", (MCQuestion("q", ("a",), ("b",)),), "/src/mc.json")
    with pytest.raises(TaskError, match=r"/src/mc\.json: task 'mc' holds mc items, not word pairs"):
        _ = task.pairs
    assert _task(3).pairs == _task(3).items


def test_require_kind_names_the_task_and_method() -> None:
    require_kind(_task(3), ("pairs",), "task_vector")  # no error
    with pytest.raises(TaskError) as info:
        require_kind(_task(3, "words"), ("mc", "completion"), "dola")
    message = str(info.value)
    for fragment in ("/src/words.json", "task 'words'", "holds pairs items", "dola needs mc or completion items"):
        assert fragment in message


# ---------------------------------------------------------------- split_task


def test_split_is_deterministic_for_a_seed() -> None:
    task = _task(60)
    assert split_task(task, 10, 20, seed=3) == split_task(task, 10, 20, seed=3)


def test_split_differs_between_seeds() -> None:
    task = _task(60)
    a = split_task(task, 10, 20, seed=0)
    b = split_task(task, 10, 20, seed=1)
    assert (a.test, a.dev, a.demos) != (b.test, b.dev, b.demos)
    assert a.seed == 0 and b.seed == 1


def test_split_sizes_disjoint_and_covering() -> None:
    task = _task(57)
    s = split_task(task, n_dev=12, n_test=25, seed=7)
    assert (len(s.dev), len(s.test), len(s.demos)) == (12, 25, 57 - 12 - 25)
    demos, dev, test = set(s.demos), set(s.dev), set(s.test)
    assert not (demos & dev) and not (demos & test) and not (dev & test)
    assert demos | dev | test == set(task.pairs)


def test_split_exactly_enough_items() -> None:
    s = split_task(_task(40), n_dev=10, n_test=20, seed=0, min_demos=10)
    assert len(s.demos) == 10


def test_split_too_small_names_counts() -> None:
    task = _task(39, name="tiny")
    with pytest.raises(TaskError) as info:
        split_task(task, n_dev=10, n_test=20, seed=0, min_demos=10)
    message = str(info.value)
    for fragment in ("tiny", task.source, "39", "n_dev=10", "n_test=20", "10 demonstrations", "need 40"):
        assert fragment in message


def test_split_refuses_non_pair_tasks() -> None:
    task = Task("mc", "mc", tuple(MCQuestion(f"q{i}", ("a",), ("b",)) for i in range(50)), "/src/mc.json")
    with pytest.raises(TaskError, match="not word pairs"):
        split_task(task, 5, 5, seed=0)


# ---------------------------------------------------------------- sample_items


def _mc_task(n: int) -> Task:
    return Task("mc", "mc", tuple(MCQuestion(f"q{i}", ("a",), ("b",)) for i in range(n)), "/src/mc.json")


def test_sample_items_is_sorted_distinct_and_seeded() -> None:
    task = _mc_task(20)
    a = sample_items(task, 8, seed=0)
    assert list(a) == sorted(set(a)) and len(a) == 8 and all(0 <= i < 20 for i in a)
    assert sample_items(task, 8, seed=0) == a
    assert sample_items(task, 8, seed=1) != a
    assert sample_items(task, 20, seed=5) == tuple(range(20))


def test_sample_items_too_many_names_counts() -> None:
    with pytest.raises(TaskError, match=r"^/src/mc\.json: task 'mc' has 12 items but n_test = 13$"):
        sample_items(_mc_task(12), 13, seed=0)


# ---------------------------------------------------------------- data_hash


def test_data_hash_is_stable() -> None:
    assert _task(5).data_hash() == _task(5).data_hash()
    assert len(_task(5).data_hash()) == 64


def test_data_hash_changes_when_any_item_changes() -> None:
    base = _task(5)
    h = base.data_hash()
    for i in range(5):
        p = base.pairs[i]
        for changed in (Pair(p.input + "x", p.output), Pair(p.input, p.output + "x")):
            pairs = list(base.pairs)
            pairs[i] = changed
            assert Task(base.name, "pairs", tuple(pairs), base.source).data_hash() != h
    # Order, removal and addition also change it.
    assert Task("t", "pairs", tuple(reversed(base.pairs)), base.source).data_hash() != h
    assert Task("t", "pairs", base.pairs[:-1], base.source).data_hash() != h
    assert Task("t", "pairs", base.pairs + (Pair("new", "item"),), base.source).data_hash() != h


def test_data_hash_ignores_name_and_source() -> None:
    base = _task(5)
    assert Task("other", "pairs", base.pairs, "/elsewhere.json").data_hash() == base.data_hash()


def test_data_hash_separates_answer_lists_and_kinds() -> None:
    a = Task("q", "mc", (MCQuestion("q", ("a", "b"), ("c",)),), "s")
    b = Task("q", "mc", (MCQuestion("q", ("a",), ("b", "c")),), "s")  # same texts, an answer moved across
    assert a.data_hash() != b.data_hash()
    c = Task("c", "completion", (Completion("q", "a", ("c",)),), "s")
    assert c.data_hash() != Task("q", "mc", (MCQuestion("q", ("a",), ("c",)),), "s").data_hash()
    mc = load_task("truthful-mc", BUILTIN_DIR / "truthful-mc.json")
    completion = load_task("fact-completion", BUILTIN_DIR / "fact-completion.json")
    assert mc.data_hash() != completion.data_hash() and len(mc.data_hash()) == 64


@pytest.mark.parametrize("baseline", sorted((ROOT / "baselines").glob("smollm2-135m/*/*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_builtin_hashes_match_the_committed_baselines(baseline: Path) -> None:
    """Moving the task files and merging the readers must not change any recorded data hash."""
    recorded = json.loads(baseline.read_text(encoding="utf-8"))
    task = load_task(recorded["task"], BUILTIN_DIR / f"{recorded['task']}.json")
    assert task.data_hash() == recorded["task_data"]["sha256"]
    assert len(task.items) == recorded["task_data"]["items"]


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_a_task_file_that_is_not_utf8_names_the_file_and_the_encoding(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes('{"caf\u00e9": "coffee"}'.encode("latin-1"))
    with pytest.raises(TaskError) as info:
        load_task("latin1", path)
    assert str(path) in str(info.value) and "not UTF-8" in str(info.value)

"""Task data: the item records, one reader per file layout, one field check and one hash.

Layouts, told apart by their fields:

* word pairs (task and function vectors): a JSON list of `{"input", "output"}` objects
  or a JSON object mapping input to output;
* multiple-choice questions (DoLa): our JSON list of `{question, best_answer,
  correct_answers, incorrect_answers}` or the TruthfulQA CSV (`Question`, `Best Answer`,
  `Correct Answers`, `Incorrect Answers`, answers separated by `;`);
* completions (DoLa): our JSON list of `{prefix, completion, contradictions}` or the
  FACTOR CSV (`full_prefix`, `completion`, `contradiction_0..2`);
* two-choice behaviour questions (CAA, your own vectors, the side-effect control): a JSON list of
  `{question, matching, other}`, `matching` being the answer that shows the behaviour (or the right one).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from pytest_steer.errors import SteerError
from pytest_steer.storage.files import read_json, read_text

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"

Kind = Literal["pairs", "mc", "completion", "ab"]


class TaskError(SteerError):
    """A task file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Pair:
    """A word-pair item: the query and the expected answer."""

    input: str
    output: str


@dataclass(frozen=True)
class MCQuestion:
    """A TruthfulQA-style question: the best answer is `correct[0]`."""

    question: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...]


@dataclass(frozen=True)
class Completion:
    """A FACTOR-style passage: one true continuation and its contradictions."""

    prefix: str
    completion: str
    contradictions: tuple[str, ...]


@dataclass(frozen=True)
class Choice:
    """A two-choice question: `matching` shows the behaviour (or is the right answer), `other` does not."""

    question: str
    matching: str
    other: str


Item = Union[Pair, MCQuestion, Completion, Choice]


@dataclass(frozen=True)
class Task:
    """A named list of items of one kind, read from one file.

    `kind` says which: word "pairs", multiple-choice questions ("mc"), "completion" passages or two-choice
    questions ("ab").
    """

    name: str
    kind: Kind
    items: tuple[Item, ...]
    source: str

    @property
    def pairs(self) -> tuple[Pair, ...]:
        if self.kind != "pairs":
            raise TaskError(f"{self.source}: task '{self.name}' holds {self.kind} items, not word pairs")
        return self.items  # type: ignore[return-value]

    def data_hash(self) -> str:
        """Content hash of the items (keys cached vectors and results, recorded in baselines)."""
        payload = json.dumps([dataclasses.astuple(item) for item in self.items], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Splits:
    """Disjoint demonstration pool, dev split (selection) and test split (reported)."""

    demos: tuple[Pair, ...]
    dev: tuple[Pair, ...]
    test: tuple[Pair, ...]
    seed: int


def text_field(value: object, where: str, field: str, single_line: bool = False) -> str:
    """The one field check: a non-empty string (one line where asked), stripped."""
    if not isinstance(value, str):
        raise TaskError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskError(f"{where}: field '{field}' is empty")
    if single_line and "\n" in value:
        raise TaskError(f"{where}: field '{field}' must be a single line")
    _no_control(value, where, field)
    return value.strip()


def _no_control(value: str, where: str, field: str) -> None:
    """Text holds no control characters but tabs and line ends (a NUL or an escape code means a binary or
    corrupt file, and would reach the tokenizer unseen)."""
    bad = next((c for c in value if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    if bad is not None:
        raise TaskError(f"{where}: field '{field}' holds the control character U+{ord(bad):04X}")


# ---------------------------------------------------------------- readers


def read_pairs(data: object, source: str) -> tuple[Pair, ...]:
    """Word pairs from parsed JSON: a list of {"input", "output"} objects or an {input: output} object."""
    pairs: list[Pair] = []
    if isinstance(data, dict) and set(data) == {"input", "output"}:
        raise TaskError(f"{source}: a single {{\"input\", \"output\"}} object; a task is a list of them "
                        "(or an object mapping each input to its output)")
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{source}: entry {key!r}"
            pairs.append(Pair(text_field(key, where, "input", True), text_field(value, where, "output", True)))
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            where = f"{source}: item {i}"
            if not isinstance(entry, dict):
                raise TaskError(f"{where}: expected an object with 'input' and 'output', got {type(entry).__name__}")
            for field in ("input", "output"):
                if field not in entry:
                    raise TaskError(f"{where}: missing field '{field}'")
            pairs.append(Pair(text_field(entry["input"], where, "input", True), text_field(entry["output"], where, "output", True)))
    else:
        raise TaskError(
            f"{source}: expected a JSON list of {{\"input\", \"output\"}} objects or a JSON object "
            f"mapping input to output, got {type(data).__name__}"
        )
    seen: set[str] = set()
    for i, pair in enumerate(pairs):
        if pair.input in seen:
            raise TaskError(f"{source}: item {i}: duplicate input {pair.input!r}")
        seen.add(pair.input)
    return tuple(pairs)


def _answers(values: list[object], where: str, field: str) -> tuple[str, ...]:
    answers = tuple(v.strip() for v in values if isinstance(v, str) and v.strip())
    for answer in answers:
        _no_control(answer, where, field)
    if not answers:
        raise TaskError(f"{where}: field '{field}' needs at least one answer, got none")
    return answers


def _question(q: str, best: str, correct: list[object], incorrect: list[object], where: str) -> MCQuestion:
    good: list[object] = [best] + [c for c in correct if isinstance(c, str) and c.strip() and c.strip() != best]
    question = MCQuestion(q, _answers(good, where, "correct answers"), _answers(incorrect, where, "incorrect answers"))
    _distinct(question.correct, question.incorrect, where, ("correct answers", "incorrect answers"))
    return question


def _distinct(first: tuple[str, ...], second: tuple[str, ...], where: str, fields: tuple[str, str]) -> None:
    """No answer twice in a list or in both lists: it would be scored twice, or count as right and wrong at once."""
    for values, field in zip((first, second), fields):
        seen: set[str] = set()
        for value in values:
            if value in seen:
                raise TaskError(f"{where}: field '{field}' lists {value!r} twice")
            seen.add(value)
    both = sorted(set(first) & set(second))
    if both:
        raise TaskError(f"{where}: {both[0]!r} is both in '{fields[0]}' and in '{fields[1]}'")


def read_questions(data: list[object], source: str) -> tuple[MCQuestion, ...]:
    """Multiple-choice questions from our JSON layout."""
    out = []
    for i, item in enumerate(data):
        where = f"{source}: item {i}"
        if not isinstance(item, dict):
            raise TaskError(f"{where}: expected an object")
        for field in ("correct_answers", "incorrect_answers"):
            if field not in item:
                raise TaskError(f"{where}: missing field '{field}' (a list of strings; fields present: "
                                f"{', '.join(sorted(map(str, item))) or 'none'})")
            if not isinstance(item.get(field), list):
                raise TaskError(f"{where}: field '{field}' must be a list of strings")
        out.append(_question(text_field(item.get("question"), where, "question"), text_field(item.get("best_answer"), where, "best_answer"),
                             item["correct_answers"], item["incorrect_answers"], where))
    return tuple(out)


def read_choices(data: list[object], source: str) -> tuple[Choice, ...]:
    """Two-choice questions from our JSON layout: `{question, matching, other}` objects."""
    out, seen = [], set()
    for i, item in enumerate(data):
        where = f"{source}: item {i}"
        if not isinstance(item, dict):
            raise TaskError(f"{where}: expected an object with 'question', 'matching' and 'other'")
        for field in ("question", "matching", "other"):
            if field not in item:
                raise TaskError(f"{where}: missing field '{field}' (fields present: "
                                f"{', '.join(sorted(map(str, item))) or 'none'})")
        choice = Choice(text_field(item["question"], where, "question"),
                        text_field(item["matching"], where, "matching", True), text_field(item["other"], where, "other", True))
        _distinct((choice.matching,), (choice.other,), where, ("matching", "other"))
        if choice.question in seen:
            raise TaskError(f"{where}: duplicate question {choice.question!r}")
        seen.add(choice.question)
        out.append(choice)
    return tuple(out)


def read_completions(data: list[object], source: str) -> tuple[Completion, ...]:
    """Completion passages from our JSON layout."""
    out = []
    for i, item in enumerate(data):
        where = f"{source}: item {i}"
        if not isinstance(item, dict) or not isinstance(item.get("contradictions"), list) or not item["contradictions"]:
            raise TaskError(f"{where}: expected an object with a non-empty list 'contradictions'")
        wrong = tuple(text_field(c, where, "contradictions") for c in item["contradictions"])
        right = text_field(item.get("completion"), where, "completion")
        _distinct((right,), wrong, where, ("completion", "contradictions"))
        out.append(Completion(text_field(item.get("prefix"), where, "prefix"), right, wrong))
    return tuple(out)


_TRUTHFULQA = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")
_FACTOR = ("full_prefix", "completion", "contradiction_0", "contradiction_1", "contradiction_2")


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    """Header and each data row with its location (`<path>: row N`, the header being row 1)."""
    reader = csv.DictReader(io.StringIO(read_text(path, TaskError, "the task file"), newline=""))
    try:
        rows = [(f"{path}: row {i}", row) for i, row in enumerate(reader, start=2)]
    except csv.Error as exc:
        raise TaskError(f"{path}: line {reader.line_num + 1}: not a readable CSV row ({exc})") from exc
    for where, row in rows:
        if None in row:  # DictReader's key for cells beyond the header: an unquoted comma shifted the row
            raise TaskError(f"{where}: {len(row[None])} cell(s) more than the header's {len(reader.fieldnames or [])} "
                            "columns (a comma inside a field that is not quoted?)")
    return list(reader.fieldnames or []), rows


def _cell(row: dict[str, str], where: str, column: str) -> str:
    """A row's value of `column`; a row shorter than the header lacks it."""
    value = row.get(column)
    if value is None:
        raise TaskError(f"{where}: field '{column}' is missing (the row has fewer columns than the header)")
    return value


def _need_columns(path: Path, header: list[str], needed: tuple[str, ...]) -> None:
    missing = set(needed) - set(header)
    if missing:
        raise TaskError(f"{path}: missing CSV column(s) {', '.join(sorted(missing))}")


def read_csv_task(path: Path) -> tuple[Kind, tuple[Item, ...]]:
    """A TruthfulQA or FACTOR CSV, told apart by its columns."""
    header, rows = _csv_rows(path)
    if "Question" in header:
        _need_columns(path, header, _TRUTHFULQA)
        items: list[Item] = [
            _question(text_field(_cell(row, where, "Question"), where, "Question"),
                      text_field(_cell(row, where, "Best Answer"), where, "Best Answer"),
                      _cell(row, where, "Correct Answers").split(";"), _cell(row, where, "Incorrect Answers").split(";"),
                      where)
            for where, row in rows
        ]
        return "mc", tuple(items)
    if "full_prefix" in header:
        _need_columns(path, header, _FACTOR)
        items = []
        for where, row in rows:
            cell = {column: text_field(_cell(row, where, column), where, column) for column in _FACTOR}
            wrong = tuple(cell[f"contradiction_{k}"] for k in range(3))
            _distinct((cell["completion"],), wrong, where, ("completion", "contradictions"))
            items.append(Completion(cell["full_prefix"], cell["completion"], wrong))
        return "completion", tuple(items)
    raise TaskError(f"{path}: CSV columns match neither TruthfulQA ({', '.join(_TRUTHFULQA)}) nor FACTOR ({', '.join(_FACTOR)})")


def read_json_task(path: Path) -> tuple[Kind, tuple[Item, ...]]:
    """Any of our JSON layouts, told apart by the first item's fields."""
    data = read_json(path, TaskError, "the task file")
    first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
    if "matching" in first:
        return "ab", read_choices(data, str(path))
    if "question" in first:
        return "mc", read_questions(data, str(path))
    if "prefix" in first:
        return "completion", read_completions(data, str(path))
    return "pairs", read_pairs(data, str(path))


def load_task(name: str, path: Path) -> Task:
    """Read a task file in any supported layout."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"task '{name}': file {path} does not exist")
    kind, items = read_csv_task(path) if path.suffix.lower() == ".csv" else read_json_task(path)
    if not items:
        raise TaskError(f"{path}: the task has no items")
    return Task(name, kind, items, str(path))


def require_kind(task: Task, kinds: tuple[Kind, ...], method: str) -> None:
    """Fail with a clear message when a method gets a task of a kind it cannot score."""
    if task.kind not in kinds:
        hint = " (two-choice questions: a JSON list of {question, matching, other})" if kinds == ("ab",) else ""
        raise TaskError(
            f"{task.source}: task '{task.name}' holds {task.kind} items; {method} needs {' or '.join(kinds)} items{hint}"
        )


# ---------------------------------------------------------------- splits


def split_task(task: Task, n_dev: int, n_test: int, seed: int, min_demos: int = 10) -> Splits:
    """Shuffle word pairs with `seed` and cut them into test, dev and the demonstration pool (the rest)."""
    pairs = task.pairs
    needed = n_dev + n_test + min_demos
    if len(pairs) < needed:
        raise TaskError(
            f"{task.source}: task '{task.name}' has {len(pairs)} items but n_dev={n_dev}, "
            f"n_test={n_test} and at least {min_demos} demonstrations need {needed}"
        )
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return Splits(demos=tuple(order[n_test + n_dev :]), dev=tuple(order[n_test : n_test + n_dev]),
                  test=tuple(order[:n_test]), seed=seed)


@dataclass(frozen=True)
class ChoiceSplits:
    """Two-choice questions cut into the items vectors are built from (train), dev (selection) and test."""

    train: tuple[Choice, ...]
    dev: tuple[Choice, ...]
    test: tuple[Choice, ...]
    seed: int


def split_choices(task: Task, n_dev: int, n_test: int, seed: int, min_train: int = 0) -> ChoiceSplits:
    """Shuffle two-choice questions with `seed`: test first, then dev, the rest is the training pool."""
    require_kind(task, ("ab",), "a two-choice method")
    needed = n_dev + n_test + min_train
    if len(task.items) < needed:
        raise TaskError(f"{task.source}: task '{task.name}' has {len(task.items)} items but n_dev={n_dev}, "
                        f"n_test={n_test} and at least {min_train} training items need {needed}")
    order = list(task.items)
    random.Random(f"choices-{seed}").shuffle(order)
    return ChoiceSplits(train=tuple(order[n_test + n_dev:]), dev=tuple(order[n_test:n_test + n_dev]),  # type: ignore[arg-type]
                        test=tuple(order[:n_test]), seed=seed)  # type: ignore[arg-type]


def sample_items(task: Task, n_test: int, seed: int) -> tuple[int, ...]:
    """`n_test` item indices drawn with `seed`, kept in file order (DoLa has no dev split)."""
    if n_test > len(task.items):
        raise TaskError(f"{task.source}: task '{task.name}' has {len(task.items)} items but n_test = {n_test}")
    return tuple(sorted(random.Random(f"dola-{seed}").sample(range(len(task.items)), n_test)))


SEQUENTIAL_BLOCK = 8  # items scored between two looks of a sequential run


def sequential_order(n: int, seed: int) -> list[int]:
    """The fixed random order a sequential run scores `n` test rows in (the same on every machine for a seed)."""
    rows = list(range(n))
    random.Random(f"sequential-{seed}").shuffle(rows)
    return rows

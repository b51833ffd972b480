"""Multiple-choice and completion task data for DoLa: our JSON layouts and the study's CSV layouts."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pytest_steer.tasks import TaskError


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


def _text(value: object, where: str, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"{where}: field '{field}' must be a non-empty string")
    return value.strip()


def _answers(values: list[str], where: str, field: str, minimum: int) -> tuple[str, ...]:
    answers = tuple(v.strip() for v in values if v.strip())
    if len(answers) < minimum:
        raise TaskError(f"{where}: field '{field}' needs at least {minimum} answers, got {len(answers)}")
    return answers


def _json_list(path: Path, what: str) -> list[object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise TaskError(f"{path}: expected a JSON list of {what}")
    return data


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise TaskError(f"{path}: file does not exist")
    return path


def _csv_rows(path: Path, needed: set[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """Each data row with its location (`<path>: row N`, N counting the header as row 1)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = needed - set(reader.fieldnames or [])
        if missing:
            raise TaskError(f"{path}: missing CSV column(s) {', '.join(sorted(missing))}")
        for i, row in enumerate(reader, start=2):
            yield f"{path}: row {i}", row


def _question(q: str, best: str, correct: list[str], incorrect: list[str], where: str) -> MCQuestion:
    good = [best] + [c for c in correct if c.strip() and c.strip() != best]
    return MCQuestion(q, _answers(good, where, "correct answers", 1), _answers(incorrect, where, "incorrect answers", 1))


def load_mc_questions(path: Path) -> list[MCQuestion]:
    """Our JSON list ({question, best_answer, correct_answers, incorrect_answers}) or a TruthfulQA CSV
    (`Question`, `Best Answer`, `Correct Answers`, `Incorrect Answers`, answers separated by ';')."""
    out: list[MCQuestion] = []
    if _existing(path).suffix.lower() == ".csv":
        for where, row in _csv_rows(path, {"Question", "Best Answer", "Correct Answers", "Incorrect Answers"}):
            out.append(_question(_text(row["Question"], where, "Question"), _text(row["Best Answer"], where, "Best Answer"),
                                 row["Correct Answers"].split(";"), row["Incorrect Answers"].split(";"), where))
    else:
        for i, item in enumerate(_json_list(path, "questions")):
            where = f"{path}: item {i}"
            if not isinstance(item, dict):
                raise TaskError(f"{where}: expected an object")
            for field in ("correct_answers", "incorrect_answers"):
                if not isinstance(item.get(field), list):
                    raise TaskError(f"{where}: field '{field}' must be a list of strings")
            out.append(_question(_text(item.get("question"), where, "question"), _text(item.get("best_answer"), where, "best_answer"),
                                 item["correct_answers"], item["incorrect_answers"], where))
    if not out:
        raise TaskError(f"{path}: no questions")
    return out


def load_completions(path: Path) -> list[Completion]:
    """Our JSON list ({prefix, completion, contradictions}) or a FACTOR CSV
    (`full_prefix`, `completion`, `contradiction_0`..`contradiction_2`)."""
    out: list[Completion] = []
    if _existing(path).suffix.lower() == ".csv":
        for where, row in _csv_rows(path, {"full_prefix", "completion", "contradiction_0", "contradiction_1", "contradiction_2"}):
            wrong = tuple(_text(row[f"contradiction_{k}"], where, f"contradiction_{k}") for k in range(3))
            out.append(Completion(_text(row["full_prefix"], where, "full_prefix"), _text(row["completion"], where, "completion"), wrong))
    else:
        for i, item in enumerate(_json_list(path, "passages")):
            where = f"{path}: item {i}"
            if not isinstance(item, dict) or not isinstance(item.get("contradictions"), list) or not item["contradictions"]:
                raise TaskError(f"{where}: expected an object with a non-empty list 'contradictions'")
            wrong = tuple(_text(c, where, "contradictions") for c in item["contradictions"])
            out.append(Completion(_text(item.get("prefix"), where, "prefix"), _text(item.get("completion"), where, "completion"), wrong))
    if not out:
        raise TaskError(f"{path}: no passages")
    return out


@dataclass(frozen=True)
class DolaTask:
    """A DoLa task: multiple-choice questions (`kind` "mc") or completion passages ("completion")."""

    name: str
    kind: Literal["mc", "completion"]
    items: tuple[MCQuestion, ...] | tuple[Completion, ...]
    source: str

    def data_hash(self) -> str:
        payload = json.dumps([dataclasses.astuple(item) for item in self.items], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


_MC_KEYS = ("question", "Question")
_COMPLETION_KEYS = ("prefix", "full_prefix")


def _layout(path: Path) -> Literal["mc", "completion"]:
    if _existing(path).suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            keys = set(next(csv.reader(handle), []))
    else:
        data = _json_list(path, "questions or passages")
        keys = set(data[0]) if data and isinstance(data[0], dict) else set()
    if keys & set(_MC_KEYS):
        return "mc"
    if keys & set(_COMPLETION_KEYS):
        return "completion"
    raise TaskError(
        f"{path}: not a DoLa task: expected multiple-choice items (question, best_answer, correct_answers, "
        "incorrect_answers; or the TruthfulQA CSV columns) or completion passages (prefix, completion, "
        "contradictions; or the FACTOR CSV columns)"
    )


def load_dola_task(name: str, path: Path) -> DolaTask:
    """Load either layout, telling them apart by their fields."""
    kind = _layout(path)
    items = tuple(load_mc_questions(path)) if kind == "mc" else tuple(load_completions(path))
    return DolaTask(name, kind, items, str(path))

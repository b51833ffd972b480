"""Task data: loading word-pair datasets, deterministic splits and prompt templates."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path


class TaskError(Exception):
    """A task file is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class Pair:
    """One task item: the query and the expected answer."""

    input: str
    output: str


@dataclass(frozen=True)
class Task:
    """A named list of pairs read from one file."""

    name: str
    pairs: tuple[Pair, ...]
    source: str

    def data_hash(self) -> str:
        """Content hash of the pairs, used to key cached vectors."""
        payload = json.dumps([[p.input, p.output] for p in self.pairs], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class Splits:
    """Disjoint demonstration pool, dev split (selection) and test split (reported)."""

    demos: tuple[Pair, ...]
    dev: tuple[Pair, ...]
    test: tuple[Pair, ...]
    seed: int


def _check_text(value: object, where: str, field: str) -> str:
    if not isinstance(value, str):
        raise TaskError(f"{where}: field '{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise TaskError(f"{where}: field '{field}' is empty")
    if "\n" in value:
        raise TaskError(f"{where}: field '{field}' must be a single line")
    return value.strip()


def parse_pairs(data: object, source: str) -> list[Pair]:
    """Read either a JSON list of {"input", "output"} objects or a JSON object {input: output}."""
    pairs: list[Pair] = []
    if isinstance(data, dict):
        for key, value in data.items():
            where = f"{source}: entry {key!r}"
            pairs.append(Pair(_check_text(key, where, "input"), _check_text(value, where, "output")))
    elif isinstance(data, list):
        for i, entry in enumerate(data):
            where = f"{source}: item {i}"
            if not isinstance(entry, dict):
                raise TaskError(f"{where}: expected an object with 'input' and 'output', got {type(entry).__name__}")
            for field in ("input", "output"):
                if field not in entry:
                    raise TaskError(f"{where}: missing field '{field}'")
            pairs.append(Pair(_check_text(entry["input"], where, "input"), _check_text(entry["output"], where, "output")))
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
    if not pairs:
        raise TaskError(f"{source}: the task has no items")
    return pairs


def load_task(name: str, path: Path) -> Task:
    """Load a task file (either supported JSON layout)."""
    if not path.is_file():
        raise TaskError(f"task '{name}': file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}: not valid JSON: {exc}") from exc
    return Task(name=name, pairs=tuple(parse_pairs(data, str(path))), source=str(path))


def split_task(task: Task, n_dev: int, n_test: int, seed: int, min_demos: int = 10) -> Splits:
    """Shuffle with `seed` and cut into test, dev and the demonstration pool (the rest)."""
    needed = n_dev + n_test + min_demos
    if len(task.pairs) < needed:
        raise TaskError(
            f"{task.source}: task '{task.name}' has {len(task.pairs)} items but n_dev={n_dev}, "
            f"n_test={n_test} and at least {min_demos} demonstrations need {needed}"
        )
    order = list(task.pairs)
    random.Random(seed).shuffle(order)
    test = tuple(order[:n_test])
    dev = tuple(order[n_test : n_test + n_dev])
    demos = tuple(order[n_test + n_dev :])
    return Splits(demos=demos, dev=dev, test=test, seed=seed)


def zero_shot_prompt(query: str) -> str:
    return f"Q: {query}\nA:"


def few_shot_prompt(demos: list[Pair] | tuple[Pair, ...], query: str) -> str:
    """`Q: x1\\nA: y1\\n\\n...Q: xq\\nA:` with the demonstrations in the given order."""
    shots = "".join(f"Q: {d.input}\nA: {d.output}\n\n" for d in demos)
    return shots + zero_shot_prompt(query)


def target_text(pair: Pair) -> str:
    return " " + pair.output

"""Property tests of every reader of user or stored input: arbitrary bytes, arbitrary JSON / TOML structures
and mutations of a valid file give a valid record or the reader's own error, never another exception."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.cases.casefile import BrokenCase, Case, load_case_file
from pytest_steer.judge.compare import CompareError, load_saved
from pytest_steer.storage.files import StoreError
from pytest_steer.report.merge import MergeError, load_shard, main
from pytest_steer.record import CaseResult, is_name
from pytest_steer.report.cases import CaseReport
from pytest_steer.tasks import Task, TaskError, load_task
from pytest_steer.judge.verdict import ScoreChange, Verdict

ROOT = Path(__file__).resolve().parents[1]
BASELINE = json.loads((ROOT / "baselines" / "smollm2-135m" / "task_vector" / "present-past.json").read_text())
BASELINE.pop("vector_sha256")  # no vector is copied beside it
DOLA_BASELINE = json.loads((ROOT / "baselines" / "gemma3-270m" / "dola" / "fact-completion-lower.json").read_text())

CASE_FILE = """
[defaults]
n_dev = 10
n_test = 20
seed = 3
tolerance = "auto"

[methods.task_vector]
n_shots = 3
layers = [0, 1]

[models.local]
path = "model"
device = "cpu"

[tasks.mine]
path = "mine.json"

[[suite]]
models = ["smollm2-135m", "local"]
methods = ["task_vector"]
tasks = ["antonym", "mine"]

[[suite]]
models = ["local"]
methods = ["dola"]
tasks = ["truthful-mc"]
variant = "upper"
settings = {bucket = "upper"}

[[suite]]
models = ["smollm2-135m"]
methods = ["function_vector"]
tasks = ["antonym"]
variant = "few"
settings = {n_shots = 4}

[[case]]
model = "smollm2-135m"
task = "antonym"
expect = "fail"
reason = "known"
"""
PAIRS = [{"input": f"w{i}", "output": f"v{i}"} for i in range(60)]
QUESTIONS = [{"question": "Why?", "best_answer": "So", "correct_answers": ["So", "Thus"], "incorrect_answers": ["No"]}]
COMPLETIONS = [{"prefix": "The sky is", "completion": "blue", "contradictions": ["green", "red"]}]
TRUTHFULQA = [["Question", "Best Answer", "Correct Answers", "Incorrect Answers"], ["Why?", "So", "So; Thus", "No"]]

TRICKY_TEXT = st.sampled_from(["", "../", "a/../b", "x\n", "a\x00b", "\ud800", "smollm2-135m", "task_vector", "NaN",
                               "~nobody-here/x", "/", ".", "..", "1e400", "-1"])
SCALARS = (st.none() | st.booleans() | st.integers() | st.sampled_from([2**32, 2**63, 2**64, -(2**70), -1, 0, 1])
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12) | TRICKY_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | TRICKY_TEXT, inner, max_size=4), max_leaves=16)
FAST = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("properties")
    (folder / "mine.json").write_text(json.dumps(PAIRS))
    return folder


# ---------------------------------------------------------------- structures and mutations


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


@st.composite
def mutated(draw: st.DrawFn, valid: Any) -> Any:
    """`valid` with one to three values dropped or replaced by a value of another type."""
    data = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        where = list(paths(data))
        if not where:
            break
        *outer, last = draw(st.sampled_from(where))
        parent = data
        for key in outer:
            parent = parent[key]
        if draw(st.booleans()):
            del parent[last]
        else:
            parent[last] = draw(VALUES)
    return data


def toml_value(value: Any) -> str:
    """A value as inline TOML (None, which TOML lacks, as an empty table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    return "{}"


def toml(data: dict[str, Any]) -> str:
    """A document of `key = value` lines; arrays of tables as arrays of inline tables."""
    return "".join(f"{json.dumps(str(key))} = {toml_value(value)}\n" for key, value in data.items())


def report() -> dict[str, Any]:
    """A complete two-case report (a word task with its vector and a DoLa case) as `--steer-report` writes it."""
    cases = []
    for data in (BASELINE, DOLA_BASELINE):
        result = CaseResult.from_baseline(data)
        verdict = Verdict(passed=True, stored_steered=0.5, changes=(ScoreChange("steered", 0.5, 0.6, 10, 0.1, (0.0, 0.2)),),
                          tolerance=0.05)
        cases.append(CaseReport(result.id, result.model, result.method, result.task, result.variant, "pass", result,
                                verdict).to_json())
    return {"complete": True, "unfinished": [], "unused_baselines": [], "counts": {"pass": 2}, "cases": cases}


REPORT = report()


def write(path: Path, content: bytes | str | Any) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        # a lone surrogate is written as the invalid bytes a broken editor would leave
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8",
                        errors="surrogatepass")
    return path


# ---------------------------------------------------------------- what a valid record is


def assert_valid_result(result: CaseResult) -> None:
    """Names usable as path parts, finite metrics, one outcome in [0, 1] per test item."""
    assert all(is_name(n) for n in (result.model, result.method, result.task))
    assert result.variant == "" or is_name(result.variant)
    m = result.metrics
    numbers = [m.unsteered, m.steered, m.delta, *m.delta_ci, m.gated.ci_level]
    assert all(isinstance(x, float) and math.isfinite(x) for x in numbers)
    outcomes = result.outcomes
    assert len(outcomes.items) == m.n_test >= 1
    for values in (outcomes.unsteered, outcomes.steered, outcomes.icl or outcomes.steered,
                   *(v for pair in outcomes.secondary.values() for v in pair)):
        assert len(values) == m.n_test and all(0 <= v <= 1 and not isinstance(v, bool) for v in values)
    assert 0 <= result.provenance.seed < 2**32


def assert_valid_reports(cases: Any) -> None:
    for case in cases:
        assert isinstance(case, CaseReport) and isinstance(case.id, str)
        if case.result is not None:
            assert_valid_result(case.result)


def assert_valid_cases(items: list[Case | BrokenCase]) -> None:
    assert items
    for item in items:
        assert isinstance(item, Case | BrokenCase)
        if isinstance(item, Case):
            assert is_name(item.model.name) and is_name(item.task)
            assert 0 <= item.options.seed < 2**32 and 1 <= item.options.n_test <= 1_000_000


# ---------------------------------------------------------------- case files


def read_cases(workdir: Path, content: bytes | str) -> None:
    assert_valid_cases(load_case_file(write(workdir / "steer_p.toml", content)))


def test_the_valid_case_file_expands(workdir: Path) -> None:
    items = load_case_file(write(workdir / "steer_p.toml", CASE_FILE))
    assert [i.message for i in items if isinstance(i, BrokenCase)] == []


@FAST
@given(st.binary(max_size=300))
def test_case_file_from_bytes(workdir: Path, content: bytes) -> None:
    read_cases(workdir, content)


@FAST
@given(st.dictionaries(st.sampled_from(["defaults", "methods", "models", "tasks", "suite", "case"]) | st.text(max_size=6),
                       VALUES, max_size=5))
def test_case_file_from_structures(workdir: Path, data: dict[str, Any]) -> None:
    read_cases(workdir, toml(data))


@settings(max_examples=150, deadline=None)
@given(mutated(tomllib.loads(CASE_FILE)))
def test_case_file_from_mutations(workdir: Path, data: dict[str, Any]) -> None:
    read_cases(workdir, toml(data))


# ---------------------------------------------------------------- task files


def read_task(path: Path) -> None:
    try:
        task = load_task("t", path)
    except TaskError:
        return
    assert isinstance(task, Task) and task.items
    task.data_hash()  # every text encodes


@FAST
@given(st.binary(max_size=300), st.sampled_from(["t.json", "t.csv"]))
def test_task_file_from_bytes(workdir: Path, content: bytes, name: str) -> None:
    read_task(write(workdir / name, content))


@FAST
@given(VALUES)
def test_task_file_from_structures(workdir: Path, data: Any) -> None:
    read_task(write(workdir / "t.json", data))


@FAST
@given(st.sampled_from([PAIRS, QUESTIONS, COMPLETIONS]).flatmap(mutated))
def test_task_file_from_mutations(workdir: Path, data: Any) -> None:
    read_task(write(workdir / "t.json", data))


@FAST
@given(st.lists(st.lists(st.text(max_size=8) | TRICKY_TEXT.filter(lambda s: "\ud800" not in s), max_size=5), max_size=4),
       st.booleans())
def test_truthfulqa_csv_from_rows(workdir: Path, rows: list[list[str]], bom: bool) -> None:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(TRUTHFULQA[:1] + rows)
    read_task(write(workdir / "t.csv", ("\ufeff" if bom else "") + buffer.getvalue()))


# ---------------------------------------------------------------- baselines


def read_baseline(workdir: Path, content: bytes | str | Any) -> None:
    write(workdir / "baselines" / "smollm2-135m" / "task_vector" / "present-past.json", content)
    try:
        result = BaselineStore(workdir / "baselines").load("smollm2-135m", "task_vector", "present-past")
    except StoreError:
        return
    assert result is not None
    assert_valid_result(result)


@pytest.fixture(scope="module", autouse=True)
def baseline_folder(workdir: Path) -> None:
    (workdir / "baselines" / "smollm2-135m" / "task_vector").mkdir(parents=True)


@FAST
@given(st.binary(max_size=300))
def test_baseline_from_bytes(workdir: Path, content: bytes) -> None:
    read_baseline(workdir, content)


@FAST
@given(VALUES | st.dictionaries(st.sampled_from(sorted(BASELINE)), VALUES, max_size=8))
def test_baseline_from_structures(workdir: Path, data: Any) -> None:
    read_baseline(workdir, data)


@settings(max_examples=150, deadline=None)
@given(mutated(BASELINE))
def test_baseline_from_mutations(workdir: Path, data: Any) -> None:
    read_baseline(workdir, data)


@FAST
@given(name=TRICKY_TEXT | st.text(max_size=10))
def test_baseline_paths_stay_in_the_folder(workdir: Path, name: str) -> None:
    store = BaselineStore(workdir / "baselines")
    for parts in ((name, "m", "s"), ("m", name, "s"), ("m", "m", name)):
        try:
            path = store.json_path(*parts)
        except StoreError:
            continue
        assert path.resolve().is_relative_to(store.root.resolve()) and all(map(is_name, parts))


# ---------------------------------------------------------------- saved reports and merge shards


def read_report(workdir: Path, content: bytes | str | Any) -> None:
    path = write(workdir / "report.json", content)
    try:
        assert_valid_reports(load_saved(path).values())
    except CompareError:
        pass
    try:
        assert_valid_reports(load_shard(path).cases)
    except MergeError:
        pass


def test_the_valid_report_reads() -> None:
    assert len(REPORT["cases"]) == 2


@FAST
@given(st.binary(max_size=300))
def test_report_from_bytes(workdir: Path, content: bytes) -> None:
    read_report(workdir, content)


@FAST
@given(VALUES | st.fixed_dictionaries({"complete": st.booleans(), "cases": st.lists(VALUES, max_size=2)}))
def test_report_from_structures(workdir: Path, data: Any) -> None:
    read_report(workdir, data)


@settings(max_examples=200, deadline=None)
@given(mutated(REPORT))
def test_report_from_mutations(workdir: Path, data: Any) -> None:
    read_report(workdir, data)


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@settings(max_examples=40, deadline=None)
@given(mutated(REPORT))
def test_merge_update_never_raises_or_writes_outside(workdir: Path, data: Any) -> None:
    run = workdir / "merge"
    run.mkdir(exist_ok=True)
    shard = write(run / "shard.json", data)
    before = tree(workdir) - tree(run)
    out, err_buffer = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err_buffer):
        code = main([str(shard), "-o", str(run / "merged.json"), "--update", "--baseline-dir", str(run / "baselines"),
                     "--vectors", str(run / "vectors")])
    err = err_buffer.getvalue()
    assert code in (0, 1, 2, 5)
    assert code != 2 or err.count("\n") == 1
    assert tree(workdir) - tree(run) == before

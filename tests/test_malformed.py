"""Malformed user and stored input, one class per case: every reader gives its own error naming the file
and the field, never a crash (RecursionError, OverflowError, KeyError, a hang on a FIFO, a write outside
the baseline folder)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.cases.casefile import BrokenCase, load_case_file
from pytest_steer.judge.compare import CompareError, load_saved
from pytest_steer.storage.files import StoreError
from pytest_steer.report.merge import MergeError, find_vector, load_shard, main
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport
from pytest_steer.tasks import TaskError, load_task
from pytest_steer.judge.verdict import ScoreChange, Verdict

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "baselines" / "smollm2-135m" / "task_vector" / "present-past.json"
DEEP = "[" * 100_000 + "]" * 100_000  # beyond any recursion limit
NESTED = "[" * 100 + "]" * 100  # parses, but deeper than any file this project writes

SUITE = """
[[suite]]
models = ["smollm2-135m"]
methods = ["task_vector"]
tasks = ["antonym"]
"""


def baseline_data() -> dict[str, Any]:
    """A committed baseline as plain JSON data, without its vector checksum (no vector is copied)."""
    data = json.loads(BASELINE.read_text(encoding="utf-8"))
    data.pop("vector_sha256")
    return data


def report_data() -> dict[str, Any]:
    """A complete one-case report as `--steer-report` writes it."""
    result = CaseResult.from_baseline(baseline_data())
    verdict = Verdict(passed=True, stored_steered=0.9, changes=(ScoreChange("steered", 0.9, 0.95, 80),), tolerance=0.05)
    case = CaseReport(result.id, result.model, result.method, result.task, result.variant, "pass", result, verdict)
    return {"complete": True, "unfinished": [], "unused_baselines": [], "counts": {"pass": 1}, "cases": [case.to_json()]}


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def changed(make: Callable[[], dict[str, Any]], edit: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = make()
    edit(data)
    return data


def put(keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit setting `a.b.0.c` (list indices as numbers) to `value`."""
    def edit(data: dict[str, Any]) -> None:
        *outer, last = [int(k) if k.isdigit() else k for k in keys.split(".")]
        for key in outer:
            data = data[key]
        data[last] = value
    return edit


def drop(keys: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *outer, last = [int(k) if k.isdigit() else k for k in keys.split(".")]
        for key in outer:
            data = data[key]
        del data[last]
    return edit


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


# ---------------------------------------------------------------- case files


def broken_message(path: Path) -> str:
    items = load_case_file(path)
    assert items and all(isinstance(i, BrokenCase) for i in items), items
    return " | ".join(i.message for i in items)


@pytest.mark.parametrize(("text", "field"), [
    pytest.param(f"x = {DEEP}\n", "nested too deeply", id="case-toml-nested-100000-deep"),
    pytest.param("[defaults]\nseed = 18446744073709551616\n" + SUITE, "defaults.seed", id="case-seed-2**64"),
    pytest.param("[defaults]\nseed = 4294967296\n" + SUITE, "[defaults].seed: must be at most 4294967295",
                 id="case-seed-2**32"),
    pytest.param("[defaults]\nseed = -1\n" + SUITE, "[defaults].seed: must be >= 0", id="case-seed-negative"),
    pytest.param("[defaults]\nseed = true\n" + SUITE, "[defaults].seed: expected an integer, got True", id="case-seed-bool"),
    pytest.param("[defaults]\nn_test = 10000000\n" + SUITE, "[defaults].n_test: must be at most 1000000",
                 id="case-n-test-unbounded"),
    pytest.param("[defaults]\nn_dev = false\n" + SUITE, "[defaults].n_dev: expected an integer", id="case-n-dev-bool"),
    pytest.param("[methods.task_vector]\nbatch_size = 9223372036854775808\n" + SUITE, "methods.task_vector.batch_size",
                 id="case-method-setting-beyond-64-bits"),
    pytest.param(SUITE + '[[case]]\nmodel = "smollm2-135m"\nseed = 4294967296\n', "case[0] (for smollm2-135m-task_vector-antonym).seed",
                 id="case-override-seed-out-of-range"),
    pytest.param(SUITE.replace('tasks = ["antonym"]', 'tasks = ["antonym"]\nvariant = "low\\n"\nsettings = {n_shots = 3}'),
                 "suite[0].variant: expected a name", id="case-variant-trailing-newline"),
    pytest.param(SUITE.replace('"smollm2-135m"', '"../evil"'), "model name '../evil' may hold only", id="case-model-dotdot"),
    pytest.param(SUITE.replace('"antonym"', '"a/b"'), "task name 'a/b' may hold only", id="case-task-slash"),
    pytest.param(SUITE.replace('"antonym"', '"' + "t" * 101 + '"'), "at most 100 characters", id="case-task-name-101-chars"),
    pytest.param('[models."modèle"]\npackaged = "smollm2-135m"\n' + SUITE.replace('"smollm2-135m"', '"modèle"'),
                 "model name 'modèle' may hold only", id="case-model-name-not-ascii"),
    pytest.param("[defaults]\ntolerance = 1.0\n" + SUITE, "[defaults].tolerance: must be 'auto' or a number in [0, 1)",
                 id="case-tolerance-lets-every-drop-pass"),
    pytest.param(f"x = {NESTED}\n" + SUITE, "is nested deeper than 64 levels", id="case-toml-nested-100-deep"),
    pytest.param('[tasks.antonym]\npath = "a\\u0000b"\n' + SUITE, "[tasks.antonym].path: expected a file path",
                 id="case-task-path-nul"),
    pytest.param('[models.smollm2-135m]\npath = "~no-such-user-here/m"\n' + SUITE, "[models.smollm2-135m].path: cannot use path",
                 id="case-model-path-unknown-home"),
    pytest.param('[models.smollm2-135m]\npackaged = "smollm2-135m"\ndevice = "cuda\\n"\n' + SUITE,
                 "[models.smollm2-135m].device: expected one of", id="case-device-trailing-newline"),
])
def test_a_malformed_case_file_is_a_broken_case_naming_the_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "steer_x.toml"
    path.write_text(text, encoding="utf-8")
    message = broken_message(path)
    assert str(path) in message and field in message


@pytest.mark.parametrize(("make", "reason"), [
    pytest.param(lambda p: p.mkdir() or p, "it is not a regular file but a folder", id="case-file-is-a-folder"),
    pytest.param(make_fifo, "it is not a regular file but a FIFO", id="case-file-is-a-fifo"),
    pytest.param(lambda p: p.write_bytes(b"reason = '\xe9'\n") or p, "not UTF-8 text: byte 10", id="case-file-latin1"),
])
def test_a_case_file_that_is_not_a_utf8_file_is_named(tmp_path: Path, make: Callable[[Path], Any], reason: str) -> None:
    path = tmp_path / "steer_x.toml"
    make(path)
    assert f"{path}: cannot read case file ({reason})" in broken_message(path)


# ---------------------------------------------------------------- task files


@pytest.mark.parametrize(("name", "content", "field"), [
    pytest.param("t.json", DEEP, "not valid JSON: nested too deeply", id="task-json-nested-100000-deep"),
    pytest.param("t.json", NESTED, "nested deeper than 64 levels", id="task-json-nested-100-deep"),
    pytest.param("t.json", '[{"input": "\\ud800", "output": "x"}]', "field '[0].input' holds text that is not UTF-8",
                 id="task-json-lone-surrogate"),
    pytest.param("t.json", '[{"input": "a", "output": ' + "9" * 5000 + "}]", "not valid JSON", id="task-json-huge-integer"),
    pytest.param("t.json", '[{"input": "a", "output": NaN}]', "item 0: field 'output' must be a string, got float",
                 id="task-json-nan-output"),
    pytest.param("t.json", "", "not valid JSON", id="task-json-empty-file"),
    pytest.param("t.json", '[{"question": "q", "best_answer": "a", "correct_answers": "a", "incorrect_answers": []}]',
                 "item 0: field 'correct_answers' must be a list", id="task-mc-answers-not-a-list"),
    pytest.param("t.csv", "Question,Best Answer,Correct Answers,Incorrect Answers\nq,a,a\n",
                 "row 2: field 'Incorrect Answers' is missing", id="task-csv-short-row"),
    pytest.param("t.csv", "full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\n\"" + "x" * 200_000 + "\",c,d,e,f\n",
                 "not a readable CSV row", id="task-csv-field-over-limit"),
    pytest.param("t.csv", "Question,Best Answer,Correct Answers,Incorrect Answers\nq\x00?,a,a,b\n",
                 "row 2: field 'Question' holds the control character U+0000", id="task-csv-nul-in-question"),
    pytest.param("t.json", '[{"input": "a\\u001b[31m", "output": "b"}]',
                 "item 0: field 'input' holds the control character U+001B", id="task-json-escape-code-in-input"),
    pytest.param("t.json", '{"input": "hot", "output": "cold"}', "a single {\"input\", \"output\"} object",
                 id="task-json-one-pair-not-in-a-list"),
    pytest.param("t.json", '[{"question": "q", "best_answer": "a", "correct_answers": ["c"], "incorrect_answers": ["c"]}]',
                 "item 0: 'c' is both in 'correct answers' and in 'incorrect answers'", id="task-mc-answer-right-and-wrong"),
    pytest.param("t.json", '[{"question": "q", "best_answer": "a", "correct_answers": [], "incorrect_answers": ["b", " b"]}]',
                 "item 0: field 'incorrect answers' lists 'b' twice", id="task-mc-answer-twice"),
    pytest.param("t.json", '[{"question": "q", "best answer": "a", "correct answers": ["a"], "incorrect answers": ["b"]}]',
                 "item 0: missing field 'correct_answers' (a list of strings; fields present: best answer",
                 id="task-mc-csv-column-names-in-json"),
    pytest.param("t.csv", "Question,Best Answer,Correct Answers,Incorrect Answers\nq,a,a,b,c\n",
                 "row 2: 1 cell(s) more than the header's 4 columns", id="task-csv-unquoted-comma"),
    pytest.param("t.csv", "full_prefix,completion,contradiction_0,contradiction_1,contradiction_2\np,c,d,c,f\n",
                 "row 2: 'c' is both in 'completion' and in 'contradictions'", id="task-factor-contradiction-is-the-completion"),
    pytest.param("t.json", '[{"prefix": "p", "completion": "c", "contradictions": ["d", "d"]}]',
                 "item 0: field 'contradictions' lists 'd' twice", id="task-completion-contradiction-twice"),
])
def test_a_malformed_task_file_names_the_file_and_field(tmp_path: Path, name: str, content: str, field: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TaskError, match=re.escape(field)) as info:
        load_task("t", path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("make", "kind"), [
    pytest.param(lambda p: p.mkdir(), "a folder", id="task-path-is-a-folder"),
    pytest.param(make_fifo, "a FIFO", id="task-path-is-a-fifo"),
    pytest.param(lambda p: p.write_bytes(b"Question\n\xff\n"), "not UTF-8 text: byte 9", id="task-csv-not-utf8"),
])
def test_a_task_path_that_is_not_a_regular_utf8_file_is_named(tmp_path: Path, make: Callable[[Path], Any], kind: str) -> None:
    path = tmp_path / "t.csv"
    make(path)
    with pytest.raises(TaskError, match=re.escape(kind)) as info:
        load_task("t", path)
    assert str(info.value).startswith(f"{path}: cannot read the task file (")


def test_a_truthfulqa_csv_saved_with_a_bom_reads_as_without(tmp_path: Path) -> None:
    text = "Question,Best Answer,Correct Answers,Incorrect Answers\nWhy?,Because,Because; So,No; Never\n"
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_text(text, encoding="utf-8")
    bom.write_text(text, encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    assert load_task("q", bom).items == load_task("q", plain).items


# ---------------------------------------------------------------- baselines


def load_baseline(tmp_path: Path, data: Any) -> CaseResult | None:
    write_json(tmp_path / "smollm2-135m" / "task_vector" / "present-past.json", data)
    return BaselineStore(tmp_path).load("smollm2-135m", "task_vector", "present-past")


@pytest.mark.parametrize(("data", "field"), [
    pytest.param(DEEP, "not valid JSON: nested too deeply", id="baseline-nested-100000-deep"),
    pytest.param(lambda: changed(baseline_data, put("per_item.steered.0", float("nan"))),
                 "field 'per_item.steered[0]': expected a finite number, got nan", id="baseline-outcome-nan"),
    pytest.param(lambda: changed(baseline_data, put("per_item.steered.3", float("inf"))),
                 "field 'per_item.steered[3]': expected a finite number", id="baseline-outcome-inf"),
    pytest.param(lambda: changed(baseline_data, put("per_item.unsteered.0", 2)),
                 "field 'per_item.unsteered[0]': expected an outcome in [0, 1], got 2", id="baseline-outcome-not-0-or-1"),
    pytest.param(lambda: changed(baseline_data, lambda d: d["per_item"]["steered"].pop()),
                 "field 'per_item.steered': expected 80 per-item outcomes", id="baseline-outcomes-shorter-than-n-test"),
    pytest.param(lambda: changed(baseline_data, lambda d: d["per_item"]["items"].append("extra")),
                 "field 'per_item.items': expected 80 test items", id="baseline-items-longer-than-n-test"),
    pytest.param(lambda: changed(baseline_data, put("metrics.steered", "0.9")),
                 "field 'metrics.steered': expected a finite number, got '0.9'", id="baseline-metric-as-string"),
    pytest.param(lambda: changed(baseline_data, put("metrics.n_test", True)),
                 "field 'metrics.n_test': expected an integer, got True", id="baseline-n-test-bool"),
    pytest.param(lambda: changed(baseline_data, put("seed", 2**32)),
                 "field 'seed': expected a seed in 0..4294967295", id="baseline-seed-out-of-range"),
    pytest.param(lambda: changed(baseline_data, put("model", "../../outside")),
                 "field 'model': expected a name", id="baseline-model-dotdot"),
    pytest.param(lambda: changed(baseline_data, put("variant", "lower\n")),
                 "field 'variant': expected a name", id="baseline-variant-trailing-newline"),
    pytest.param(lambda: changed(baseline_data, put("vector_sha256", 12)),
                 "field 'vector_sha256': expected a string", id="baseline-vector-sha-not-a-string"),
    pytest.param(lambda: changed(baseline_data, put("chosen.layer", {"x": 1})),
                 "field 'chosen.layer': expected a string, finite number", id="baseline-chosen-object"),
    pytest.param(lambda: changed(baseline_data, put("curves.dev_accuracy", "high")),
                 "field 'curves.dev_accuracy': expected a list of numbers", id="baseline-curve-a-string"),
    pytest.param(lambda: changed(baseline_data, drop("task_data.sha256")),
                 "no field 'task_data.sha256'", id="baseline-task-data-without-hash"),
    pytest.param(lambda: changed(baseline_data, put("fingerprint", "\ud800")),
                 "field 'fingerprint' holds text that is not UTF-8", id="baseline-lone-surrogate"),
])
def test_a_malformed_baseline_is_a_store_error_naming_the_file_and_field(tmp_path: Path, data: Any, field: str) -> None:
    with pytest.raises(StoreError, match=re.escape(field)) as info:
        load_baseline(tmp_path, data if isinstance(data, str) else data())
    assert str(tmp_path / "smollm2-135m" / "task_vector" / "present-past.json") in str(info.value)


@pytest.mark.parametrize(("model", "method", "slot", "field"), [
    pytest.param("../outside", "task_vector", "t", "model name '../outside'", id="baseline-path-model-dotdot"),
    pytest.param("m", "a/b", "t", "method name 'a/b'", id="baseline-path-method-slash"),
    pytest.param("m", "task_vector", "t\n", "slot name 't\\n'", id="baseline-path-slot-newline"),
    pytest.param("m", "task_vector", "t\x00", "slot name 't\\x00'", id="baseline-path-slot-nul"),
])
def test_a_baseline_path_from_data_stays_inside_the_folder(tmp_path: Path, model: str, method: str, slot: str,
                                                            field: str) -> None:
    store = BaselineStore(tmp_path / "baselines")
    for where in (store.json_path, store.vector_path, store.load):
        with pytest.raises(StoreError, match=re.escape(field)) as info:
            where(model, method, slot)
        assert str(tmp_path / "baselines") in str(info.value)


def test_a_baseline_folder_symlinked_outside_is_refused(tmp_path: Path) -> None:
    (tmp_path / "baselines").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "baselines" / "m").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="leads outside the baseline folder"):
        BaselineStore(tmp_path / "baselines").json_path("m", "task_vector", "t")


def test_a_baseline_that_is_a_folder_is_named(tmp_path: Path) -> None:
    path = tmp_path / "smollm2-135m" / "task_vector" / "present-past.json"
    path.mkdir(parents=True)
    with pytest.raises(StoreError, match=re.escape(f"{path}: cannot read the baseline (it is not a regular file but a folder)")):
        BaselineStore(tmp_path).load("smollm2-135m", "task_vector", "present-past")


def test_every_committed_baseline_loads() -> None:
    store = BaselineStore(ROOT / "baselines")
    ids = store.all_ids()
    assert len(ids) >= 50
    for model, method, slot in sorted(ids):
        result = store.load(model, method, slot)
        assert result is not None and result.model == model and result.method == method


# ---------------------------------------------------------------- saved reports (--steer-compare)


@pytest.mark.parametrize(("data", "field"), [
    pytest.param("", "cannot read the saved report (not valid JSON", id="report-empty"),
    pytest.param("{cases: []}", "cannot read the saved report (not valid JSON", id="report-not-json"),
    pytest.param(DEEP, "not valid JSON: nested too deeply", id="report-nested-100000-deep"),
    pytest.param("[]", "expected an object with a 'cases' list", id="report-a-list"),
    pytest.param('{"cases": {}}', "expected an object with a 'cases' list", id="report-cases-not-a-list"),
    pytest.param(lambda: changed(report_data, drop("cases.0.status")), "no field 'cases[0].status'",
                 id="report-case-without-status"),
    pytest.param(lambda: changed(report_data, put("cases.0.id", 7)), "field 'cases[0].id': expected a string",
                 id="report-case-id-a-number"),
    pytest.param(lambda: changed(report_data, put("cases.0.result.metrics.steered", float("nan"))),
                 "field 'cases[0].result.metrics.steered': expected a finite number, got nan", id="report-metric-nan"),
    pytest.param(lambda: changed(report_data, put("cases.0.result.per_item.steered.0", float("inf"))),
                 "field 'cases[0].result.per_item.steered[0]': expected a finite number", id="report-outcome-infinity"),
    pytest.param(lambda: changed(report_data, put("cases.0.result.per_item.icl", [1, 0])),
                 "field 'cases[0].result.per_item.icl': expected 80 per-item outcomes", id="report-outcomes-wrong-length"),
    pytest.param(lambda: changed(report_data, put("cases.0.verdict.stored_steered", "0.9")),
                 "field 'cases[0].verdict.stored_steered': expected a finite number or null", id="report-number-as-string"),
    pytest.param(lambda: changed(report_data, put("cases.0.verdict.baseline", "great")),
                 "field 'cases[0].verdict.baseline': expected one of 'ok'", id="report-verdict-unknown-baseline"),
    pytest.param(lambda: changed(report_data, drop("cases.0.verdict.changes.0.before")),
                 "no field 'cases[0].verdict.changes[0].before'", id="report-score-change-without-before"),
    pytest.param(lambda: changed(report_data, put("cases.0.model", "a/../b")),
                 "field 'cases[0].model': expected a name", id="report-model-with-slash"),
    pytest.param(lambda: changed(report_data, put("cases.0.model_loads", -1)),
                 "field 'cases[0].model_loads': expected a count >= 0", id="report-negative-model-loads"),
])
def test_a_malformed_saved_report_is_a_compare_error_naming_the_file_and_field(tmp_path: Path, data: Any,
                                                                               field: str) -> None:
    path = write_json(tmp_path / "old.json", data if isinstance(data, str) else data())
    with pytest.raises(CompareError, match=re.escape(field)) as info:
        load_saved(path)
    assert str(info.value).startswith(f"--steer-compare {path}: ")


def test_a_saved_report_that_is_a_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=re.escape(f"--steer-compare {tmp_path}: cannot read the saved report (it is "
                                                     "not a regular file but a folder)")):
        load_saved(tmp_path)


def test_a_valid_saved_report_reads_as_written(tmp_path: Path) -> None:
    data = report_data()
    saved = load_saved(write_json(tmp_path / "old.json", data))
    assert [c.to_json() for c in saved.values()] == data["cases"]


# ---------------------------------------------------------------- merge inputs


@pytest.mark.parametrize(("data", "field"), [
    pytest.param(lambda: changed(report_data, drop("complete")),
                 "no field 'complete': written by an older pytest-steer or by an interrupted run", id="shard-without-complete"),
    pytest.param(lambda: changed(report_data, lambda d: d.update(complete=False, unfinished=["m-task_vector-antonym"])),
                 "field 'complete' is false: 1 selected case(s) have no result ('m-task_vector-antonym'); re-run them",
                 id="shard-incomplete-names-unfinished-cases"),
    pytest.param(lambda: changed(report_data, lambda d: d.update(complete=False, state="running")),
                 "field 'complete' is false: the run never finished (state 'running'", id="shard-of-a-killed-run"),
    pytest.param(lambda: changed(report_data, put("complete", "yes")), "field 'complete': expected true or false",
                 id="shard-complete-a-string"),
    pytest.param(lambda: changed(report_data, lambda d: d.update(complete=False, unfinished="all")),
                 "field 'unfinished': expected a list of case ids", id="shard-unfinished-not-a-list"),
    pytest.param(lambda: changed(report_data, put("unfinished", ["x"])), "field 'unfinished' lists 1 case(s)",
                 id="shard-complete-but-unfinished-cases"),
    pytest.param(lambda: changed(report_data, put("unused_baselines", [1])), "'unused_baselines' must be a list of paths",
                 id="shard-unused-baselines-not-paths"),
    pytest.param(lambda: changed(report_data, put("cases.0.result.model", "../../outside")),
                 "field 'result.model': expected a name", id="shard-result-model-dotdot"),
    pytest.param(lambda: changed(report_data, put("cases.0.result.task", "antonym\n")),
                 "field 'result.task': expected a name", id="shard-result-task-trailing-newline"),
    pytest.param(DEEP, "not valid JSON: nested too deeply", id="shard-nested-100000-deep"),
    pytest.param(lambda: changed(report_data, put("cases.0.id", "m-task_vector-antonym\n")),
                 "field 'id': expected a name", id="shard-case-id-trailing-newline"),
    pytest.param(lambda: changed(report_data, lambda d: d.update({"complete\n": 2**70})),
                 "field 'complete\\n' holds", id="shard-key-with-newline-named-on-one-line"),
])
def test_a_malformed_shard_is_a_merge_error_naming_the_file_and_field(tmp_path: Path, data: Any, field: str) -> None:
    path = write_json(tmp_path / "shard.json", data if isinstance(data, str) else data())
    with pytest.raises(MergeError, match=re.escape(field)) as info:
        load_shard(path)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("recorded", [
    pytest.param("/runner/../..", id="vector-file-dotdot"),
    pytest.param("/runner/linked/key.safetensors", id="vector-file-through-a-symlink"),
])
def test_a_vector_path_from_a_report_stays_inside_the_vectors_folder(tmp_path: Path, recorded: str) -> None:
    (tmp_path / "vectors").mkdir()
    (tmp_path / "vectors" / "linked").symlink_to(tmp_path)
    with pytest.raises(MergeError, match=r"case c: field 'result.vector_file' .* leads outside --vectors"):
        find_vector("c", Path(recorded), [tmp_path / "vectors"])


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(("key", "value"), [
    pytest.param("model", "../../outside", id="merge-update-model-dotdot"),
    pytest.param("method", "x/../../..", id="merge-update-method-dotdot"),
    pytest.param("variant", "../../../v", id="merge-update-variant-dotdot"),
])
def test_a_merge_update_with_a_name_leading_outside_writes_and_deletes_nothing(tmp_path: Path, capsys, key: str,
                                                                                value: str) -> None:
    work = tmp_path / "work"
    base = work / "baselines"
    (base / "keep").mkdir(parents=True)
    (tmp_path / "outside.json").write_text("{}")
    data = report_data()
    data["cases"][0]["result"][key] = value
    shard = write_json(work / "shard.json", data)
    before = tree(tmp_path)
    code = main([str(shard), "-o", str(work / "merged.json"), "--update", "--baseline-dir", str(base)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"merge refused: {shard}: case #0 ")
    assert f"field 'result.{key}': expected a name" in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize(("header", "reason"), [
    pytest.param(b"[1, 2]", "malformed safetensors header", id="vector-header-a-list"),
    pytest.param(b'{"__metadata__": [1]}', "malformed safetensors header", id="vector-metadata-a-list"),
    pytest.param(b'{"__metadata__": {"content_sha256": 7}}', "metadata has no 'content_sha256'",
                 id="vector-checksum-a-number"),
    pytest.param(b"[" * 5000 + b"]" * 5000, "not a readable safetensors file", id="vector-header-nested-deep"),
])
def test_a_vector_whose_header_is_not_an_object_is_a_store_error(tmp_path: Path, header: bytes, reason: str) -> None:
    import struct

    from pytest_steer.storage.files import StoreError, read_verified

    path = tmp_path / "v.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(StoreError, match=re.escape(reason)) as info:
        read_verified(path)
    assert str(path) in str(info.value)


def test_a_vector_path_that_is_a_fifo_is_refused_without_opening_it(tmp_path: Path) -> None:
    from pytest_steer.storage.files import StoreError, read_verified

    with pytest.raises(StoreError, match="not a regular file but a FIFO"):
        read_verified(make_fifo(tmp_path / "v.safetensors"))


@pytest.mark.parametrize("command", ["merge", "html"])
def test_an_output_that_is_a_folder_or_device_is_refused_by_the_commands(tmp_path: Path, capsys, command: str) -> None:
    from pytest_steer.report import html
    from pytest_steer.report import merge

    shard = write_json(tmp_path / "shard.json", report_data())
    for target in (tmp_path, Path("/dev/null")):
        main = merge.main if command == "merge" else html.main
        assert main([str(shard), "-o", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"-o {target}:" in err and err.count("\n") == 1
    assert Path("/dev/null").exists() and not Path("/dev/null").is_file()

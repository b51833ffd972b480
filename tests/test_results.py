"""Results keyed by their inputs: every input counts, a stored result is reused only when all match,
a damaged one is recomputed; end to end, changing one input recomputes exactly the affected cases."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields, replace
from pathlib import Path

import pytest

from pytest_steer.record import CaseResult
from pytest_steer.storage.results import ResultInputs, ResultCache

INPUTS = ResultInputs(
    case="m-task_vector-t", model_source={"name": "m", "kind": "folder", "location": "/m"}, fingerprint="f" * 32,
    device="cpu", dtype="float32", method="task_vector", task_sha256="a" * 64,
    counts={"dev": 10, "test": 12}, seed=0, settings={"n_shots": 3}, versions={"torch": "2.13", "transformers": "5.24"},
    source="0123456789abcdef",
)
CHANGED = {
    "case": "m-task_vector-u", "model_source": {"name": "m", "kind": "folder", "location": "/n"}, "fingerprint": "e" * 32,
    "device": "cuda:0", "dtype": "bfloat16", "method": "function_vector", "task_sha256": "b" * 64,
    "counts": {"dev": 10, "test": 13}, "seed": 1, "settings": {"n_shots": 4},
    "versions": {"torch": "2.14", "transformers": "5.24"}, "source": "fedcba9876543210",
    "adapter_override": {"blocks": "model.layers"}, "gate_vector": "replay", "replay": "c" * 64, "quick": True,
    "sequential": "d" * 16, "control": "e" * 16, "files": {"vector": "f" * 64},
}


def test_every_input_is_part_of_the_key() -> None:
    assert set(CHANGED) == {f.name for f in fields(ResultInputs)}
    keyed = {name: value for name, value in CHANGED.items() if name != "model_source"}
    keys = {INPUTS.key()} | {replace(INPUTS, **{name: value}).key() for name, value in keyed.items()}
    assert len(keys) == len(keyed) + 1


def test_the_same_weights_from_another_source_share_the_key(tmp_path: Path, stored_result) -> None:
    """The fingerprint covers the model's files: a copy in another folder (same fingerprint) reuses the result."""
    moved = replace(INPUTS, model_source=CHANGED["model_source"])
    assert moved.key() == INPUTS.key()
    store = ResultCache(tmp_path)
    store.put(INPUTS, stored_result)
    assert store.get(moved) is not None


def _result(baseline_file: Path) -> CaseResult:
    return CaseResult.from_baseline(json.loads(baseline_file.read_text()))


@pytest.fixture
def stored_result() -> CaseResult:
    root = Path(__file__).resolve().parents[1] / "baselines" / "smollm2-135m" / "task_vector" / "present-past.json"
    return replace(_result(root), computed_at="2026-11-25T10:00:00+00:00")


def test_a_stored_result_comes_back_marked_reused_only_for_the_same_inputs(tmp_path: Path, stored_result) -> None:
    store = ResultCache(tmp_path)
    assert store.get(INPUTS) is None
    store.put(INPUTS, stored_result)
    again = store.get(INPUTS)
    assert again is not None and again.reused and not stored_result.reused
    assert replace(again, reused=False) == stored_result
    assert again.computed_at == "2026-11-25T10:00:00+00:00"
    assert store.get(replace(INPUTS, seed=1)) is None


def test_a_damaged_stored_result_is_recomputed_never_used(tmp_path: Path, stored_result) -> None:
    store = ResultCache(tmp_path)
    store.put(INPUTS, stored_result)
    path = store.path(INPUTS)
    text = path.read_text()
    path.write_text(text.replace('"steered": 0.7', '"steered": 0.9', 1))  # parses, but the checksum fails
    with pytest.warns(UserWarning, match="checksum"):
        assert store.get(INPUTS) is None
    path.write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.get(INPUTS) is None
    store.put(INPUTS, replace(stored_result, vector_file=str(tmp_path / "gone.safetensors")))
    with pytest.warns(UserWarning, match="vector file"):
        assert store.get(INPUTS) is None


def _cases(report: Path) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads(report.read_text())["cases"]}


def _reused(report: Path) -> dict[str, bool]:
    return {case_id: case["result"]["reused"] for case_id, case in _cases(report).items()}


def _expect_fresh(report: Path, fresh: set[str]) -> None:
    reused = _reused(report)
    assert {case_id for case_id, was_reused in reused.items() if not was_reused} == fresh, reused


def test_changing_one_input_recomputes_exactly_the_affected_cases(suite, pytester: pytest.Pytester, tiny_model_dir: Path,
                                                                  tiny_task_file: Path) -> None:
    from safetensors.torch import load_file, save_file

    write, run = suite
    own_task = Path(shutil.copy(tiny_task_file, pytester.path / "own.json"))
    own_model = Path(shutil.copytree(tiny_model_dir, pytester.path / "own-model"))
    path = write(models='["tinya", "tinyb"]')
    text = path.read_text().replace(f'[models.tinyb]\npath = "{tiny_model_dir}', f'[models.tinyb]\npath = "{own_model}')
    path.write_text(text.replace(f'[tasks.othertask]\npath = "{tiny_task_file}', f'[tasks.othertask]\npath = "{own_task}'))
    report = pytester.path / "report.json"
    run("--steer-update", f"--steer-report={report}").assert_outcomes(passed=4)
    _expect_fresh(report, set(_reused(report)))
    computed = _cases(report)

    result = run(f"--steer-report={report}", "--junitxml=junit.xml")
    result.assert_outcomes(passed=4)
    _expect_fresh(report, set())
    reused = _cases(report)
    for case_id, case in reused.items():  # the stored numbers, not new ones
        assert case["model_loads"] == 0  # judged without loading a model
        assert case["result"]["computed_at"] == computed[case_id]["result"]["computed_at"]
        for key in ("metrics", "per_item", "chosen", "curves", "fingerprint"):
            assert case["result"][key] == computed[case_id]["result"][key]
    result.stdout.fnmatch_lines(["*4 of them judged from results stored under unchanged inputs*"])
    assert "reused 20" in result.stdout.str()
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="steer_reused" value="true"' in junit and 'name="steer_computed_at"' in junit

    data = json.loads(own_task.read_text())  # the task data of othertask
    data[0]["output"] = "v59"
    own_task.write_text(json.dumps(data))
    run(f"--steer-report={report}")
    _expect_fresh(report, {"tinya-task_vector-othertask", "tinyb-task_vector-othertask"})

    weights = load_file(str(own_model / "model.safetensors"))  # one weight of tinyb's model
    weights["model.norm.weight"][3] += 1e-4
    save_file(weights, str(own_model / "model.safetensors"), metadata={"format": "pt"})
    run(f"--steer-report={report}")
    _expect_fresh(report, {"tinyb-task_vector-tinytask", "tinyb-task_vector-othertask"})

    path.write_text(path.read_text() + '\n[[case]]\nmodel = "tinya"\ntask = "tinytask"\nseed = 3\n')  # one seed
    run(f"--steer-report={report}")
    _expect_fresh(report, {"tinya-task_vector-tinytask"})

    path.write_text(path.read_text().replace("n_shots = 3", "n_shots = 2"))  # the method settings of all four
    run(f"--steer-report={report}")
    _expect_fresh(report, set(_reused(report)))

    before = _cases(report)
    run(f"--steer-report={report}", "--steer-rerun")  # recomputes everything, to the same numbers
    _expect_fresh(report, set(_reused(report)))
    for case_id, case in _cases(report).items():
        for key in ("metrics", "per_item", "chosen"):
            assert case["result"][key] == before[case_id]["result"][key]

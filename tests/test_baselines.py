"""Tests for pytest_steer.storage.baselines: the baseline store reads and writes typed case results."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.storage.files import StoreError, read_verified
from pytest_steer.record import SCHEMA, CaseResult, Comparison, Metrics, Outcomes, Provenance, RecordError, TaskData
from pytest_steer.storage.tensors import read_tensors, write_tensors

COMMITTED = Path(__file__).resolve().parent.parent / "baselines"


def make_result(
    model: str = "m", method: str = "task_vector", task: str = "t", variant: str = "", steered: float = 0.75,
    vector_file: str | None = None, mc: bool = False,
) -> CaseResult:
    """A complete, JSON-clean case result (the shape `SteerSession.run_case` builds)."""
    gated = Comparison(unsteered=0.25, steered=steered, delta=steered - 0.25, delta_ci=(0.05, 0.5), ci_level=0.95, n_test=4)
    if mc:
        metrics = Metrics(gated, metric="mc1", secondary={"mc2": Comparison(0.4, 0.5, 0.1, (-0.1, 0.3), 0.95, 4)})
        outcomes = Outcomes(("q0", "q1", "q2", "q3"), (0.0, 1.0, 0.0, 0.0), (1.0, 1.0, 0.0, 1.0), None,
                            {"mc2": ((0.3, 0.6, 0.2, 0.5), (0.4, 0.7, 0.3, 0.6))})
    else:
        metrics = Metrics(gated, icl=1.0, recovery=steered)
        right = round(steered * 4)
        assert right / 4 == steered, "a score of 4 items is a multiple of 0.25"
        outcomes = Outcomes(("w0", "w1", "w2", "w3"), (0.0, 1.0, 0.0, 0.0), (1.0,) * right + (0.0,) * (4 - right),
                            (1.0, 1.0, 1.0, 1.0))
    provenance = Provenance(
        fingerprint="fp-123", model_source={"name": model, "kind": "folder", "location": "/models/m", "revision": None},
        adapter={"model_type": "llama", "num_layers": 3}, versions={"pytest_steer": "0.1.0", "torch": "2.x"},
        task_data=TaskData(f"/tasks/{task}.json", "ab" * 32, 60), seed=0,
        counts={"demos": 38, "dev": 10, "test": 4}, settings={"n_shots": 5, "layers": [0, 2], "reuse_prefix": True},
    )
    case_id = "-".join(x for x in (model, method, task, variant) if x)
    return CaseResult(
        id=case_id, model=model, method=method, task=task, variant=variant, metrics=metrics,
        chosen={"layer": 2, "relative_depth": 0.667}, curves={"dev_layers": [0, 1, 2], "dev_accuracy": [0.1, 0.2, 0.5]},
        outcomes=outcomes, provenance=provenance, diagnostics={"hook": {"calls": 3, "max_abs_change": 1.5}, "notes": ["é"]},
        timing_s={"model": 1.5, "method": 2.25}, vector_file=vector_file,
    )


def stage_vector(folder: Path, value: float = 1.0) -> Path:
    """A staged accepted vector, as the session writes it before `--steer-update` copies it."""
    path = folder / "staged" / f"v{value}.safetensors"
    write_tensors(path, {"task_vector": torch.full((8,), value)}, {"layer": "2"})
    return path


def stored(result: CaseResult) -> CaseResult:
    """What loading a written result gives back: the kept fields, without the run-only ones."""
    return dataclasses.replace(result, timing_s={}, vector_file=None)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- round trips


def test_round_trip_with_a_vector_file(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path / "baselines")
    staged = stage_vector(tmp_path)
    result = make_result("smollm2-135m", "task_vector", "antonym", vector_file=str(staged))
    written = bs.write(result, "antonym")
    jpath = tmp_path / "baselines" / "smollm2-135m" / "task_vector" / "antonym.json"
    vpath = tmp_path / "baselines" / "smollm2-135m" / "task_vector" / "antonym.safetensors"
    assert written == [vpath, jpath]  # the vector first, then the JSON that accepts it
    assert bs.json_path("smollm2-135m", "task_vector", "antonym") == jpath
    assert bs.vector_path("smollm2-135m", "task_vector", "antonym") == vpath
    assert vpath.read_bytes() == staged.read_bytes() and staged.is_file()  # copied, not moved
    tensors, meta = read_tensors(vpath)
    assert torch.equal(tensors["task_vector"], torch.full((8,), 1.0)) and meta["layer"] == "2"

    loaded = bs.load("smollm2-135m", "task_vector", "antonym")
    assert isinstance(loaded, CaseResult)
    assert loaded == stored(result)
    assert loaded.metrics.steered == 0.75 and loaded.metrics.icl == 1.0 and loaded.metrics.delta_ci == (0.05, 0.5)
    assert loaded.provenance.task_data == TaskData("/tasks/antonym.json", "ab" * 32, 60)
    assert leftovers(jpath.parent) == []


def test_the_file_holds_the_kept_fields_only(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path)
    result = make_result(vector_file=str(stage_vector(tmp_path)))
    bs.write(result, "t")
    data = json.loads(bs.json_path("m", "task_vector", "t").read_text(encoding="utf-8"))
    assert data == {**result.to_baseline(), "vector_sha256": read_verified(Path(result.vector_file))[1]["content_sha256"]}
    assert data["schema"] == SCHEMA
    assert "timing_s" not in data and "vector_file" not in data  # run-only fields never leak into a baseline
    assert "variant" not in data  # written only when there is one


def test_round_trip_of_a_multiple_choice_result_with_a_variant(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path)
    result = make_result("m", "dola", "truthful-mc", variant="upper", mc=True)
    assert bs.write(result, "truthful-mc-upper") == [bs.json_path("m", "dola", "truthful-mc-upper")]
    loaded = bs.load("m", "dola", "truthful-mc-upper")
    assert loaded == stored(result)
    assert loaded.variant == "upper" and loaded.metrics.metric == "mc1" and loaded.metrics.icl is None
    assert loaded.metrics.secondary["mc2"].steered == 0.5
    assert loaded.outcomes.secondary["mc2"][1] == (0.4, 0.7, 0.3, 0.6)
    data = json.loads(bs.json_path("m", "dola", "truthful-mc-upper").read_text(encoding="utf-8"))
    assert data["variant"] == "upper" and data["per_item"]["mc2_steered"] == [0.4, 0.7, 0.3, 0.6]


def test_round_trip_without_a_vector(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path)
    result = make_result()
    written = bs.write(result, "t")
    assert written == [bs.json_path("m", "task_vector", "t")]
    assert not bs.vector_path("m", "task_vector", "t").exists()
    assert bs.load("m", "task_vector", "t") == stored(result)


def test_overwrite_replaces_the_json_and_the_vector(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path / "b")
    bs.write(make_result(steered=0.5, vector_file=str(stage_vector(tmp_path, 1.0))), "t")
    new = make_result(steered=1.0, vector_file=str(stage_vector(tmp_path, 2.0)))
    bs.write(new, "t")
    loaded = bs.load("m", "task_vector", "t")
    assert loaded == stored(new) and loaded.metrics.steered == 1.0
    tensors, _ = read_tensors(bs.vector_path("m", "task_vector", "t"))
    assert torch.equal(tensors["task_vector"], torch.full((8,), 2.0))
    assert leftovers(bs.json_path("m", "task_vector", "t").parent) == []


def test_a_missing_staged_vector_writes_nothing(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path / "b")
    with pytest.raises(StoreError, match="gone.safetensors: not a readable safetensors file"):
        bs.write(make_result(vector_file=str(tmp_path / "gone.safetensors")), "t")
    assert bs.load("m", "task_vector", "t") is None  # no JSON without its vector
    assert bs.all_ids() == set()


def test_run_only_fields_survive_the_json_channel() -> None:
    result = make_result(vector_file="/cache/accepted/x.safetensors")
    again = CaseResult.from_baseline(json.loads(json.dumps(result.to_json())))
    assert again == result  # `to_json` carries timing and the staged vector (xdist workers to the controller)


# ---------------------------------------------------------------- missing and unreadable baselines


def test_missing_returns_none(tmp_path: Path) -> None:
    assert BaselineStore(tmp_path).load("m", "tv", "t") is None
    assert BaselineStore(tmp_path / "nonexistent").load("m", "tv", "t") is None


def _write_raw(bs: BaselineStore, content: str) -> Path:
    path = bs.json_path("m", "tv", "t")
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    return path


def test_invalid_json(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path)
    path = _write_raw(bs, '{"metrics": {"steered": 0.')
    with pytest.raises(StoreError) as info:
        bs.load("m", "tv", "t")
    message = str(info.value)
    assert str(path) in message and "not valid JSON" in message and "--steer-update" in message


@pytest.mark.parametrize("content", ['{"best_layer": 3}', '{"metrics": 0.5}', "[1, 2]", '"text"'])
def test_missing_metrics(tmp_path: Path, content: str) -> None:
    bs = BaselineStore(tmp_path)
    path = _write_raw(bs, content)
    with pytest.raises(StoreError) as info:
        bs.load("m", "tv", "t")
    message = str(info.value)
    assert str(path) in message and "'metrics'" in message and "--steer-update" in message


@pytest.mark.parametrize(
    "drop, fragment",
    [("task_data", "'task_data'"), ("per_item", "'per_item'"), ("fingerprint", "'fingerprint'"),
     ("metrics.steered", "'metrics.steered'"), ("metrics.delta_ci", "'metrics.delta_ci'")],
)
def test_a_missing_field_is_named(tmp_path: Path, drop: str, fragment: str) -> None:
    data = make_result().to_baseline()
    if "." in drop:
        outer, inner = drop.split(".")
        del data[outer][inner]
    else:
        del data[drop]
    bs = BaselineStore(tmp_path)
    path = _write_raw(bs, json.dumps(data))
    with pytest.raises(StoreError) as info:
        bs.load("m", "tv", "t")
    message = str(info.value)
    assert str(path) in message and f"is malformed: no field {fragment}" in message and "--steer-update" in message


@pytest.mark.parametrize("field, value", [("seed", "zero"), ("metrics.delta_ci", [0.1]), ("metrics.n_test", None)])
def test_a_malformed_field_is_a_store_error(tmp_path: Path, field: str, value: object) -> None:
    data = make_result().to_baseline()
    if "." in field:
        outer, inner = field.split(".")
        data[outer][inner] = value
    else:
        data[field] = value
    bs = BaselineStore(tmp_path)
    path = _write_raw(bs, json.dumps(data))
    with pytest.raises(StoreError, match=f"is malformed: field '{field}': expected ") as info:
        bs.load("m", "tv", "t")
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- all_ids


def test_all_ids(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path)
    assert bs.all_ids() == set()
    assert BaselineStore(tmp_path / "nope").all_ids() == set()
    bs.write(make_result("smollm2-135m", "task_vector", "antonym", vector_file=str(stage_vector(tmp_path))), "antonym")
    bs.write(make_result("smollm2-135m", "task_vector", "capitalize"), "capitalize")
    bs.write(make_result("qwen2.5-coder-0.5b", "dola", "truthful-mc", variant="upper", mc=True), "truthful-mc-upper")
    (tmp_path / "stray.json").write_text("{}")  # not at <model>/<method>/<slot>.json: ignored
    assert bs.all_ids() == {
        ("smollm2-135m", "task_vector", "antonym"),
        ("smollm2-135m", "task_vector", "capitalize"),
        ("qwen2.5-coder-0.5b", "dola", "truthful-mc-upper"),
    }


# ---------------------------------------------------------------- the committed baselines (older layout)


def test_committed_dola_baseline_loads_as_a_typed_result() -> None:
    loaded = BaselineStore(COMMITTED).load("smollm2-135m", "dola", "truthful-mc-upper")
    assert loaded is not None
    assert (loaded.id, loaded.model, loaded.method, loaded.task, loaded.variant) == (
        "smollm2-135m-dola-truthful-mc-upper", "smollm2-135m", "dola", "truthful-mc", "upper")
    m = loaded.metrics
    assert m.metric == "mc1" and m.icl is None and m.recovery is None and set(m.secondary) == {"mc2", "mc3"}
    assert m.n_test == 98 == len(loaded.outcomes.items) == len(loaded.outcomes.steered)
    assert m.steered == pytest.approx(sum(loaded.outcomes.steered) / 98)
    assert m.delta == pytest.approx(m.steered - m.unsteered)
    assert set(loaded.outcomes.secondary) == {"mc2", "mc3"} and loaded.outcomes.icl is None
    assert loaded.provenance.task_data.items == 98 and len(loaded.provenance.task_data.sha256) == 64
    assert loaded.timing_s == {} and loaded.vector_file is None


def test_committed_task_vector_baseline_loads_as_a_typed_result() -> None:
    store = BaselineStore(COMMITTED)
    loaded = store.load("smollm2-135m", "task_vector", "antonym")
    assert loaded is not None
    assert loaded.method == "task_vector" and loaded.variant == "" and loaded.metrics.metric == "accuracy"
    m = loaded.metrics
    assert m.icl is not None and m.recovery == pytest.approx(m.steered / m.icl)
    assert m.n_test == len(loaded.outcomes.items) and loaded.outcomes.icl is not None
    assert m.icl == pytest.approx(sum(loaded.outcomes.icl) / m.n_test)
    assert isinstance(loaded.chosen["layer"], int)
    assert store.vector_path("smollm2-135m", "task_vector", "antonym").is_file()


@pytest.mark.parametrize("ident", sorted(BaselineStore(COMMITTED).all_ids()), ids="/".join)
def test_committed_baselines_rewrite_to_the_same_content(ident: tuple[str, str, str]) -> None:
    """Loading and re-storing a committed baseline changes nothing but the added schema number and the
    device and dtype (a baseline without them was computed on the CPU in float32); the store's own
    `vector_sha256` (added when it writes the file) is the checksum of the vector beside it."""
    store = BaselineStore(COMMITTED)
    on_disk = json.loads(store.json_path(*ident).read_text(encoding="utf-8"))
    checksum = on_disk.pop("vector_sha256", None)
    rewritten = store.load(*ident).to_baseline()
    assert rewritten == {"device": "cpu", "dtype": "float32", **on_disk, "schema": SCHEMA}
    vector = store.vector_path(*ident)
    assert (checksum is None) == (not vector.exists())
    if checksum is not None:
        assert read_verified(vector)[1]["content_sha256"] == checksum


def test_a_result_without_vector_removes_the_slots_old_vector(tmp_path: Path) -> None:
    bs = BaselineStore(tmp_path)
    result = make_result()
    stale = bs.vector_path(result.model, result.method, "t")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older accepted vector")
    written = bs.write(result, "t")
    assert not stale.exists() and written == [bs.json_path(result.model, result.method, "t")]


@pytest.mark.parametrize("field, value", [("steered", float("nan")), ("unsteered", float("inf")), ("icl", float("-inf"))])
def test_a_stored_non_finite_metric_is_rejected_naming_it(tmp_path: Path, field: str, value: float) -> None:
    data = make_result().to_baseline()
    data["metrics"][field] = value
    bs = BaselineStore(tmp_path)
    path = _write_raw(bs, json.dumps(data))  # json writes NaN / Infinity literals, as a hand edit could
    with pytest.raises(StoreError) as info:
        bs.load("m", "tv", "t")
    assert str(path) in str(info.value) and f"field 'metrics.{field}': expected a finite number" in str(info.value)


def _written_pair(tmp_path: Path) -> tuple[BaselineStore, Path, Path]:
    bs = BaselineStore(tmp_path / "b")
    bs.write(make_result(vector_file=str(stage_vector(tmp_path))), "t")
    return bs, bs.json_path("m", "task_vector", "t"), bs.vector_path("m", "task_vector", "t")


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_baseline_vector_is_detected_on_read(tmp_path: Path, damage: str) -> None:
    bs, _, vector = _written_pair(tmp_path)
    raw = bytearray(vector.read_bytes())
    if damage == "flip":
        raw[-3] ^= 0xFF
    vector.write_bytes(bytes(raw[: len(raw) // 2]) if damage == "truncate" else b"" if damage == "empty" else bytes(raw))
    with pytest.raises(StoreError) as info:
        bs.load("m", "task_vector", "t")
    assert str(vector) in str(info.value)


def test_a_vector_from_another_update_is_a_mismatched_pair(tmp_path: Path) -> None:
    bs, json_path, vector = _written_pair(tmp_path)
    other = BaselineStore(tmp_path / "other")
    other_file = tmp_path / "other-stage"
    other_file.mkdir()
    other.write(make_result(vector_file=str(stage_vector(other_file, value=2.0))), "t")
    vector.write_bytes(other.vector_path("m", "task_vector", "t").read_bytes())  # intact, but not this JSON's
    with pytest.raises(StoreError, match="the pair comes from two different updates") as info:
        bs.load("m", "task_vector", "t")
    assert str(json_path) in str(info.value)


def test_a_missing_vector_named_by_its_json_is_detected(tmp_path: Path) -> None:
    bs, json_path, vector = _written_pair(tmp_path)
    vector.unlink()
    with pytest.raises(StoreError, match="is missing"):
        bs.load("m", "task_vector", "t")


def test_temporary_files_of_a_killed_writer_are_cleaned_up(tmp_path: Path) -> None:
    bs, json_path, _ = _written_pair(tmp_path)
    leftover = json_path.parent / ".t.json.abc123.tmp"
    leftover.write_text("half")
    bs.write(make_result(vector_file=str(stage_vector(tmp_path))), "t")
    assert not leftover.exists()


def _write_many(root: str, stage: str, value: float, n: int) -> None:
    bs = BaselineStore(Path(root))
    for _ in range(n):
        bs.write(make_result(steered=value / 4, vector_file=stage), "t")


def test_two_concurrent_updates_never_leave_a_mismatched_pair(tmp_path: Path) -> None:
    import multiprocessing

    stages = []
    for value in (1.0, 2.0):
        folder = tmp_path / f"stage{value}"
        folder.mkdir()
        stages.append(str(stage_vector(folder, value=value)))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path / "b"), stage, v, 25))
             for stage, v in zip(stages, (1.0, 2.0))]
    for p in procs:
        p.start()
    bs = BaselineStore(tmp_path / "b")
    checks = 0
    while any(p.is_alive() for p in procs):
        if bs.json_path("m", "task_vector", "t").exists():
            with FileLock(str(bs.root / ".update.lock")):  # read a settled pair, as a reader after the run would
                result = bs.load("m", "task_vector", "t")
            assert result is not None and result.metrics.steered in (0.25, 0.5)
            checks += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    result = bs.load("m", "task_vector", "t")  # the last writer's JSON with the last writer's vector
    tensors, _ = read_tensors(bs.vector_path("m", "task_vector", "t"))
    assert float(tensors["task_vector"][0]) == result.metrics.steered * 4
    assert not list(bs.root.rglob("*.tmp"))


def test_a_malformed_interval_names_the_metric(tmp_path: Path) -> None:
    data = make_result().to_baseline()
    data["metrics"]["delta_ci"] = [0.1]
    bs = BaselineStore(tmp_path)
    _write_raw(bs, json.dumps(data))
    with pytest.raises(StoreError, match=r"field 'metrics.delta_ci': expected a list of 2 finite numbers, got \[0\.1\]"):
        bs.load("m", "tv", "t")


def _edited(edit: Callable[[dict], Any]) -> dict:
    data = make_result().to_baseline()
    edit(data)
    return data


@pytest.mark.parametrize("edit, message", [
    pytest.param(lambda d: d["metrics"].update(steered=0.25), "field 'metrics.steered': 0.25 is not the mean of its "
                 "per-item outcomes (0.750000)", id="score-edited-below-its-outcomes"),
    pytest.param(lambda d: d["metrics"].update(icl=0.5), "field 'metrics.icl': 0.5 is not the mean", id="icl-edited"),
    pytest.param(lambda d: d["metrics"].update(delta=0.9), "field 'metrics.delta': 0.9 is not steered - unsteered",
                 id="delta-edited"),
    pytest.param(lambda d: d["metrics"].update(delta_ci=[0.5, 0.05]), "its lower end 0.5 is above its upper end 0.05",
                 id="interval-reversed"),
    pytest.param(lambda d: d["per_item"].update(items=["w0", "w1", "w0", "w3"]), "test item 'w0' is listed twice",
                 id="test-item-twice"),
    pytest.param(lambda d: d.update(schema=3), "field 'schema': expected a layout version 1..2", id="schema-from-the-future"),
    pytest.param(lambda d: d.update(schema=True), "field 'schema': expected a layout version", id="schema-bool"),
    pytest.param(lambda d: d.update(model="other"), "holds the baseline of other/task_vector/t, not of m/task_vector/t",
                 id="another-models-file-copied-here"),
    pytest.param(lambda d: d.update(task="u"), "holds the baseline of m/task_vector/u", id="another-tasks-file-copied-here"),
])
def test_a_baseline_that_disagrees_with_itself_or_its_place_is_refused(tmp_path: Path, edit: Callable[[dict], Any],
                                                                        message: str) -> None:
    bs = BaselineStore(tmp_path)
    path = bs.json_path("m", "task_vector", "t")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_edited(edit)))
    with pytest.raises(StoreError) as info:
        bs.load("m", "task_vector", "t")
    assert str(path) in str(info.value) and message in str(info.value)


def test_secondary_scores_must_be_their_outcomes_means_too() -> None:
    data = make_result(mc=True).to_baseline()
    assert CaseResult.from_baseline(data).metrics.secondary["mc2"].steered == 0.5
    data["metrics"]["secondary"]["mc2"]["steered"] = 0.45
    with pytest.raises(RecordError, match=r"field 'metrics.secondary.mc2.steered': 0.45 is not the mean"):
        CaseResult.from_baseline(data)

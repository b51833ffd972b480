"""Merging the JSON reports of a suite split over machines (`python -m pytest_steer merge`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.storage.files import read_verified
from pytest_steer.report.merge import MergeError, Shard, load_shard, main, unused_everywhere
from pytest_steer.record import CaseResult, Comparison, Metrics, Outcomes, Provenance, TaskData
from pytest_steer.report.cases import CaseReport, write_json_report
from pytest_steer.storage.tensors import write_tensors
from pytest_steer.judge.verdict import Verdict

VERSIONS = {"pytest_steer": "0.1.0", "torch": "2.5.1", "transformers": "4.56.0", "numpy": "2.1.0", "python": "3.12.3"}
ROOT = Path(__file__).resolve().parent.parent


def _result(cid: str, model: str, method: str, versions: dict[str, str], fingerprint: str,
            vector_file: str | None) -> CaseResult:
    metrics = Metrics(Comparison(0.25, 0.75, 0.5, (0.25, 0.75), 0.95, 4), icl=1.0, recovery=0.75)
    outcomes = Outcomes(("w0", "w1", "w2", "w3"), (0, 1, 0, 0), (1, 1, 0, 1), (1, 1, 1, 1))
    provenance = Provenance(fingerprint, {"name": model}, {"num_layers": 3}, dict(versions),
                            TaskData("t.json", "ab" * 32, 60), 0, {"test": 4}, {"n_shots": 5})
    return CaseResult(cid, model, method, "antonym", "", metrics, {"layer": 2}, {"dev_layers": [0, 1, 2]}, outcomes,
                      provenance, {}, {"method": 1.5}, vector_file, "2026-01-02T03:04:05+00:00")


def case(model: str, status: str = "pass", method: str = "task_vector", versions: dict[str, str] | None = None,
         fingerprint: str | None = None, vector_file: str | None = None) -> CaseReport:
    """A case report as a shard writes it; status 'error' has no result."""
    cid = f"{model}-{method}-antonym"
    if status == "error":
        return CaseReport(cid, model, method, "antonym", "", status, message="model failed to load")
    result = _result(cid, model, method, VERSIONS if versions is None else versions,
                     fingerprint or f"fp-{model}", vector_file)
    verdict = Verdict(passed=status in ("pass", "xpass"))
    return CaseReport(cid, model, method, "antonym", "", status, result, verdict, worker="gw0", model_loads=1)


def shard(path: Path, *reports: CaseReport, unused: list[str] | None = None) -> Path:
    """A shard report of a complete run, written exactly as `--steer-report` writes one."""
    write_json_report(path, list(reports), {"unused_baselines": unused or [], "complete": True, "unfinished": []})
    return path


def stage(folder: Path, cid: str, method: str = "task_vector", value: float = 1.0) -> Path:
    """An accepted vector staged as a run stages it: `<cache>/accepted/<method>/<key>.safetensors`."""
    path = folder / "accepted" / method / f"key-{cid}.safetensors"
    write_tensors(path, {method: torch.full((4,), value)}, {"case": cid})
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------- merging


def test_a_clean_merge_writes_one_report_the_table_and_the_tally(tmp_path: Path, capsys) -> None:
    a = shard(tmp_path / "steer-smollm2.json", case("smollm2-135m"), case("smollm2-135m", "xfail", "function_vector"))
    b = shard(tmp_path / "steer-qwen.json", case("qwen2.5-coder-0.5b", "xpass"))
    out = tmp_path / "merged" / "steer-merged.json"
    code, stdout, err = run(capsys, a, b, "-o", out)
    assert (code, err) == (0, "")
    data = json.loads(out.read_text())
    assert data["counts"] == {"pass": 1, "xfail": 1, "xpass": 1}
    assert data["unused_baselines"] == [] and data["merged_from"] == [str(a), str(b)]
    merged = [CaseReport.from_json(c) for c in data["cases"]]
    assert [c.id for c in merged] == sorted(c.id for c in merged)
    expected = sorted(load_shard(a).cases + load_shard(b).cases, key=lambda c: c.id)
    assert merged == expected  # nothing lost or changed
    assert "pytest-steer results" in stdout and "qwen2.5-coder-0.5b" in stdout
    assert "3 steering cases from 2 shards: 1 pass, 1 xfail, 1 xpass" in stdout
    assert f"merged report written: {out}" in stdout
    assert load_shard(out).cases == tuple(merged)  # a merged report is itself a shard


@pytest.mark.parametrize(("statuses", "expected"), [
    (("pass", "fail"), 1), (("pass", "missing"), 1), (("pass", "error"), 1), (("xfail", "xpass"), 0), ((), 5),
])
def test_the_exit_status_is_the_whole_suites(tmp_path: Path, capsys, statuses: tuple[str, ...], expected: int) -> None:
    models = ("smollm2-135m", "gemma3-270m")
    paths = [shard(tmp_path / f"s{i}.json", case(m, s)) for i, (m, s) in enumerate(zip(models, statuses))]
    paths = paths or [shard(tmp_path / "empty.json")]
    code, stdout, _ = run(capsys, *paths, "-o", tmp_path / "out.json")
    assert code == expected
    assert json.loads((tmp_path / "out.json").read_text())["counts"] == {s: 1 for s in statuses}


def test_an_errored_case_has_no_versions_and_takes_no_part_in_the_check(tmp_path: Path, capsys) -> None:
    a = shard(tmp_path / "a.json", case("smollm2-135m"))
    b = shard(tmp_path / "b.json", case("gemma3-270m", "error"))
    code, stdout, err = run(capsys, a, b, "-o", tmp_path / "out.json")
    assert code == 1 and err == ""
    assert "2 steering cases from 2 shards: 1 error, 1 pass" in stdout


def test_baselines_are_unused_only_when_every_shard_says_so() -> None:
    shards = [Shard(Path("a"), (), ("x.json", "y.json")), Shard(Path("b"), (), ("y.json", "z.json"))]
    assert unused_everywhere(shards) == ["y.json"]
    assert unused_everywhere([Shard(Path("a"), (), ("x.json",)), Shard(Path("b"), ())]) == []


# ---------------------------------------------------------------- refusals


def test_a_case_in_two_shards_is_refused(tmp_path: Path, capsys) -> None:
    a = shard(tmp_path / "a.json", case("smollm2-135m"), case("gemma3-270m"))
    b = shard(tmp_path / "b.json", case("gemma3-270m", "fail"))
    code, stdout, err = run(capsys, a, b, "-o", tmp_path / "out.json")
    assert code == 2 and stdout == ""
    assert f"case gemma3-270m-task_vector-antonym is in both {a} and {b}" in err
    assert "count it twice" in err
    assert not (tmp_path / "out.json").exists()


def test_one_baseline_under_two_ids_is_refused(tmp_path: Path, capsys) -> None:
    """Two shards cannot hold one model/method/task under different ids: both would write one baseline."""
    renamed = dataclasses.replace(case("gemma3-270m"), id="gemma3-270m-task_vector-antonym2")
    a = shard(tmp_path / "a.json", case("gemma3-270m"))
    b = shard(tmp_path / "b.json", renamed)
    code, stdout, err = run(capsys, a, b, "-o", tmp_path / "out.json", "--update")
    assert code == 2 and stdout == ""
    assert "field 'id': 'gemma3-270m-task_vector-antonym2' is not the id of its model, method and task" in err
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "baselines").exists()


def test_a_result_filed_under_another_case_is_refused(tmp_path: Path, capsys) -> None:
    other = case("smollm2-135m")
    swapped = dataclasses.replace(case("gemma3-270m"), result=other.result)
    code, _, err = run(capsys, shard(tmp_path / "a.json", swapped), "-o", tmp_path / "out.json")
    assert code == 2 and "the result of 'smollm2-135m-task_vector-antonym' under case 'gemma3-270m-task_vector-antonym'" in err


def test_the_same_shard_given_twice_is_a_double_count(tmp_path: Path, capsys) -> None:
    a = shard(tmp_path / "a.json", case("smollm2-135m"))
    code, _, err = run(capsys, a, a, "-o", tmp_path / "out.json")
    assert code == 2 and f"is twice in {a}" in err
    assert not (tmp_path / "out.json").exists()


def test_shards_on_other_library_versions_are_refused(tmp_path: Path, capsys) -> None:
    a = shard(tmp_path / "a.json", case("smollm2-135m"))
    b = shard(tmp_path / "b.json", case("gemma3-270m", "error"), case("qwen2.5-coder-0.5b",
                                                                    versions={**VERSIONS, "torch": "2.6.0"}))
    code, stdout, err = run(capsys, a, b, "-o", tmp_path / "out.json")
    assert code == 2 and stdout == ""
    assert "shards disagree on the torch version" in err
    assert f"2.5.1 in {a} (case smollm2-135m-task_vector-antonym)" in err
    assert f"2.6.0 in {b} (case qwen2.5-coder-0.5b-task_vector-antonym)" in err
    assert not (tmp_path / "out.json").exists()


def test_a_version_recorded_by_one_shard_only_is_a_disagreement(tmp_path: Path, capsys) -> None:
    without_python = {k: v for k, v in VERSIONS.items() if k != "python"}
    a = shard(tmp_path / "a.json", case("smollm2-135m", versions=without_python))
    b = shard(tmp_path / "b.json", case("gemma3-270m"))
    code, _, err = run(capsys, a, b, "-o", tmp_path / "out.json")
    assert code == 2 and "python version: (not recorded) in" in err and "3.12.3 in" in err


def test_two_fingerprints_of_one_model_are_refused(tmp_path: Path, capsys) -> None:
    a = shard(tmp_path / "a.json", case("smollm2-135m", fingerprint="fp-old"))
    b = shard(tmp_path / "b.json", case("smollm2-135m", method="function_vector", fingerprint="fp-new"))
    code, _, err = run(capsys, a, b, "-o", tmp_path / "out.json")
    assert code == 2
    assert f"fingerprint of model smollm2-135m: fp-old in {a}" in err and f"fp-new in {b}" in err


@pytest.mark.parametrize(("content", "expected"), [
    (None, r"cannot read the shard report \(.*No such file"),
    ("{not json", "cannot read the shard report"),
    ("[1, 2]", "not a pytest-steer report \\(expected a JSON object with a 'cases' list"),
    ('{"counts": {}}', "not a pytest-steer report"),
    ('{"cases": [7], "complete": true}', r"case #0 is malformed \(expected an object, got int\)"),
    ('{"cases": [{"id": "m-x", "model": "m"}], "complete": true}', r"case #0 \(m-x\) is malformed \(no field 'method'\)"),
    ('{"cases": [], "complete": true, "unused_baselines": "x"}', "'unused_baselines' must be a list"),
])
def test_an_unreadable_shard_is_named_with_what_was_expected(tmp_path: Path, capsys, content: str | None,
                                                             expected: str) -> None:
    good = shard(tmp_path / "good.json", case("smollm2-135m"))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(MergeError, match=f"^{re.escape(str(bad))}: {expected}"):
        load_shard(bad)
    code, stdout, err = run(capsys, good, bad, "-o", tmp_path / "out.json")
    assert code == 2 and stdout == "" and err.startswith(f"merge refused: {bad}: ")
    assert not (tmp_path / "out.json").exists()


def test_a_case_with_malformed_metrics_is_named(tmp_path: Path) -> None:
    data = case("smollm2-135m").to_json()
    data["result"]["metrics"]["steered"] = "NaN"
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"cases": [data], "complete": True, "unfinished": []}))
    with pytest.raises(MergeError, match=r"case #0 \(smollm2-135m-task_vector-antonym\) is malformed .*finite"):
        load_shard(path)


# ---------------------------------------------------------------- --update


def test_update_writes_baselines_with_vectors_found_where_recorded_or_under_vectors(tmp_path: Path, capsys) -> None:
    here = stage(tmp_path / "cache", "smollm2-135m-task_vector-antonym", value=1.0)  # this machine's cache
    elsewhere = tmp_path / "runner" / "accepted" / "task_vector" / "key-gemma3-270m-task_vector-antonym.safetensors"
    uploaded = stage(tmp_path / "artifacts" / "gemma", "gemma3-270m-task_vector-antonym", value=2.0)
    cases = [case("smollm2-135m", vector_file=str(here)), case("gemma3-270m", "fail", vector_file=str(elsewhere)),
             case("smollm2-135m", method="dola"), case("qwen2.5-coder-0.5b", "error")]
    a = shard(tmp_path / "a.json", cases[0], cases[2])
    b = shard(tmp_path / "b.json", cases[1], cases[3])
    base = tmp_path / "baselines"
    code, stdout, err = run(capsys, a, b, "-o", tmp_path / "out.json", "--update", "--baseline-dir", base,
                            "--vectors", tmp_path / "nowhere", "--vectors", uploaded.parent.parent)
    assert code == 1 and err == ""  # a case failed and one errored: written anyway, as --steer-update does
    store = BaselineStore(base)
    assert store.all_ids() == {("smollm2-135m", "task_vector", "antonym"), ("gemma3-270m", "task_vector", "antonym"),
                               ("smollm2-135m", "dola", "antonym")}
    for report, vector in ((cases[0], here), (cases[1], uploaded)):
        loaded = store.load(report.model, report.method, "antonym")
        assert loaded == dataclasses.replace(report.result, timing_s={}, vector_file=None, computed_at=None)
        assert store.vector_path(report.model, report.method, "antonym").read_bytes() == vector.read_bytes()
        assert f"baseline written: {store.json_path(report.model, report.method, 'antonym')}" in stdout
    assert not store.vector_path("smollm2-135m", "dola", "antonym").exists()
    assert read_verified(store.vector_path("gemma3-270m", "task_vector", "antonym"))[1]["case"] == cases[1].id


def _refused_update(tmp_path: Path, capsys, vector: Path) -> str:
    """An update of two cases whose second vector is `vector`: refused, with nothing written."""
    first = stage(tmp_path / "cache", "smollm2-135m-task_vector-antonym")
    a = shard(tmp_path / "a.json", case("smollm2-135m", vector_file=str(first)))
    b = shard(tmp_path / "b.json", case("gemma3-270m", vector_file=str(vector)))
    base = tmp_path / "baselines"
    code, stdout, err = run(capsys, a, b, "-o", tmp_path / "out.json", "--update", "--baseline-dir", base,
                            "--vectors", tmp_path / "artifacts")
    assert code == 2 and stdout == ""
    assert files_under(base) == [] and not (tmp_path / "out.json").exists()
    return err


def test_update_refuses_a_missing_vector_and_writes_nothing(tmp_path: Path, capsys) -> None:
    gone = tmp_path / "runner" / "accepted" / "task_vector" / "key-gemma.safetensors"
    err = _refused_update(tmp_path, capsys, gone)
    assert "case gemma3-270m-task_vector-antonym: its vector was not found" in err
    assert str(gone) in err and str(tmp_path / "artifacts" / "task_vector" / "key-gemma.safetensors") in err


def test_update_without_vectors_says_to_pass_them(tmp_path: Path, capsys) -> None:
    gone = tmp_path / "runner" / "accepted" / "task_vector" / "key-gemma.safetensors"
    a = shard(tmp_path / "a.json", case("gemma3-270m", vector_file=str(gone)))
    code, _, err = run(capsys, a, "-o", tmp_path / "out.json", "--update", "--baseline-dir", tmp_path / "b")
    assert code == 2 and "--vectors DIR" in err and not (tmp_path / "b").exists()


def test_update_refuses_a_corrupt_vector_and_writes_nothing(tmp_path: Path, capsys) -> None:
    vector = stage(tmp_path / "artifacts", "gemma3-270m-task_vector-antonym")
    raw = bytearray(vector.read_bytes())
    raw[-1] ^= 0xFF
    vector.write_bytes(bytes(raw))
    err = _refused_update(tmp_path, capsys, vector)
    assert "case gemma3-270m-task_vector-antonym:" in err and "corrupt file" in err


def test_update_refuses_a_vector_staged_for_another_case(tmp_path: Path, capsys) -> None:
    vector = stage(tmp_path / "artifacts", "qwen2.5-coder-0.5b-task_vector-antonym")
    err = _refused_update(tmp_path, capsys, vector)
    assert f"case gemma3-270m-task_vector-antonym: {vector} holds the vector of case qwen2.5-coder-0.5b" in err


def test_the_module_runs_from_the_command_line(tmp_path: Path) -> None:
    a = shard(tmp_path / "a.json", case("smollm2-135m", "fail"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pytest_steer", "merge", str(a), "-o", str(tmp_path / "m.json")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "1 steering cases from 1 shards: 1 fail" in done.stdout and (tmp_path / "m.json").exists()


def test_the_example_workflow_runs_one_job_per_model_and_merges_them_all() -> None:
    yaml = pytest.importorskip("yaml")
    from pytest_steer.cases.casefile import marker_name
    from pytest_steer.report.markdown import load_cases

    workflow = yaml.safe_load((ROOT / "examples" / "github-actions-steer.yml").read_text())
    jobs = workflow["jobs"]
    matrix = jobs["steer"]["strategy"]["matrix"]["include"]
    models = {c.model.name for c in load_cases(ROOT / "steering_cases") if c.options.profile == "default"}
    assert {m["model"] for m in matrix} == models
    assert all(m["marker"] == marker_name(m["model"]) for m in matrix)
    merge_step = next(s["run"] for s in jobs["merge"]["steps"] if s.get("name") == "merge")
    assert "python -m pytest_steer merge" in merge_step
    assert all(f"reports/steer-{m}.json" in merge_step for m in models)

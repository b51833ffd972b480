"""Candidate models: parsing `--steer-candidate`, and a candidate run judged against the accepted baselines
(the worked example of the README on a tiny model: an exact copy passes, a damaged one is caught)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_steer.cases.candidate import Candidate, CandidateError, parse_candidate, parse_candidates
from pytest_steer.models.spec import ArchitectureOverride, ModelSpec
from pytest_steer.models.perturb import main as perturb_main
from pytest_steer.models.perturb import parse_blocks


# ---------------------------------------------------------------- parsing


def test_candidate_sources(tmp_path: Path) -> None:
    folder = tmp_path / "ft"
    folder.mkdir()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_candidate("m=gemma3-270m", tmp_path) == Candidate("m", "packaged", "gemma3-270m")
    assert parse_candidate("m=packaged:gemma3-270m", tmp_path) == Candidate("m", "packaged", "gemma3-270m")
    assert parse_candidate("m=ft", tmp_path) == Candidate("m", "folder", str(folder))  # relative to where pytest runs
    assert parse_candidate(f"m=path:{folder}", tmp_path) == Candidate("m", "folder", str(folder))
    assert parse_candidate("m=m.gguf", tmp_path) == Candidate("m", "gguf", str(gguf))
    assert parse_candidate("m = org/name@v2 ", tmp_path) == Candidate("m", "hub", "org/name", "v2")
    assert parse_candidate("m=hub:org/name", tmp_path) == Candidate("m", "hub", "org/name")


@pytest.mark.parametrize("text, fragment", [
    ("smollm2-135m", "expected ALIAS=SOURCE"),
    ("=./x", "expected ALIAS=SOURCE"),
    ("m=", "expected ALIAS=SOURCE"),
    ("m=nothing-here", "'nothing-here' is not a packaged alias (smollm2-135m"),
    ("m=path:missing", "folder "),
    ("m=missing.gguf", "GGUF file "),
    ("m=packaged:gpt-9", "unknown packaged alias 'gpt-9'"),
    ("m=hub:not a hub id", "expected a hub id org/name[@revision]"),
])
def test_candidate_errors_say_what_was_expected(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(CandidateError, match="--steer-candidate") as info:
        parse_candidate(text, tmp_path)
    assert fragment in str(info.value)


def test_an_alias_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CandidateError, match="'m' is given twice"):
        parse_candidates(["m=gemma3-270m", "m=smollm2-135m"], tmp_path)


def test_a_candidate_keeps_the_alias_layout_override_and_opt_ins() -> None:
    spec = ModelSpec("m", "packaged", "smollm2-135m", override=ArchitectureOverride(blocks="model.layers"), allow_pickle=True)
    moved = Candidate("m", "hub", "org/name", "v2").apply(spec)
    assert (moved.name, moved.kind, moved.location, moved.revision) == ("m", "hub", "org/name", "v2")
    assert moved.override == spec.override and moved.allow_pickle


def test_perturb_blocks_syntax() -> None:
    assert parse_blocks("1-3,7") == {1, 2, 3, 7}
    with pytest.raises(ValueError, match="--blocks"):
        parse_blocks("a-b")


# ---------------------------------------------------------------- candidate runs (tiny model)


def _baselines(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _accept_everything(stored: Path) -> None:
    """Make the accepted model one that answered every test item (the tiny random model answers none): the
    damaged candidate then loses every item, as a broken checkpoint loses what the accepted one knew."""
    data = json.loads(stored.read_text())
    n = len(data["per_item"]["steered"])
    data["per_item"]["steered"] = [1] * n
    data["metrics"].update(steered=1.0, delta=1.0 - data["metrics"]["unsteered"])
    stored.write_text(json.dumps(data))


def test_an_exact_copy_passes_with_identical_numbers_and_a_damaged_one_is_caught(
    suite, pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    write, run = suite
    write()
    run("--steer-update").assert_outcomes(passed=2)
    baselines = pytester.path / "baselines"
    copy, damaged = pytester.path / "copy", pytester.path / "damaged"
    assert perturb_main([str(tiny_model_dir), str(copy)]) == 0
    assert perturb_main([str(tiny_model_dir), str(damaged), "--noise", "3", "--blocks", "0-2"]) == 0
    accepted = _baselines(baselines)

    # the exact copy: the same fingerprint, so the stored results are reused and the numbers are identical
    result = run(f"--steer-candidate=tinya={copy}", "--steer-report=copy.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"candidate tinya = {copy}: 2 case(s) judged against the accepted baselines, which "
                                 "this run leaves unchanged*"])
    assert "model changed" not in result.stdout.str()
    cases = {c["id"]: c for c in _report(pytester.path / "copy.json")["cases"]}
    for cid, case in cases.items():
        stored = json.loads((baselines / "tinya" / "task_vector" / f"{cid.rsplit('-', 1)[1]}.json").read_text())
        assert case["result"]["metrics"] == stored["metrics"] and case["result"]["per_item"] == stored["per_item"]
        assert case["result"]["model_source"]["location"] == str(copy)  # the report says where this run's model came from
    assert _baselines(baselines) == accepted

    # the damaged copy against an accepted model that got every item right: a significant regression
    _accept_everything(baselines / "tinya" / "task_vector" / "tinytask.json")
    accepted = _baselines(baselines)
    result = run(f"--steer-candidate=tinya={damaged}", "--steer-report=damaged.json", "--steer-html=page.html")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "model changed: tinya:" in out and "against the accepted model (same test items, paired)" in out
    assert ("tinya-task_vector-tinytask: regression: steered 0.000 is below the stored baseline 1.000 minus tolerance "
            "0.000, significant at 0.0083 (alpha 0.05 / 6 comparisons, holm) (steered 0.000 vs accepted 1.000: -1.000 [-1.000, -1.000], McNemar "
            "p=0.00049, 12 lost / 0 gained of 12)") in out
    cases = {c["id"]: c for c in _report(pytester.path / "damaged.json")["cases"]}
    damaged_case = cases["tinya-task_vector-tinytask"]
    replay = damaged_case["result"]["replay"]
    assert replay["accepted"] == 1.0 and replay["error"] == "" and len(replay["steered"]) == 12
    assert replay["setting"] == {"layer": damaged_case["verdict"]["drift"]["before"]["layer"]}
    assert damaged_case["verdict"]["drift"]["curve"] == "dev_accuracy"
    assert damaged_case["verdict"]["power"]["n"] == 12
    assert "tinya-task_vector-tinytask: stored vector on the new model: 0.00 (accepted 1.00)" in out
    page = (pytester.path / "page.html").read_text()
    assert "McNemar p=0.00049, 12 lost / 0 gained of 12" in page and "stored vector on the new model: 0.00" in page
    assert "<li>drift: " in page
    assert _baselines(baselines) == accepted  # a candidate run never writes the accepted baselines

    # accepting the candidate is explicit, and said
    result = run(f"--steer-candidate=tinya={damaged}", "--steer-update")
    result.stdout.fnmatch_lines([f"accepted model changed: tinya is now {damaged}: --steer-update wrote the candidate's "
                                 "results as the baselines of 2 case(s)"])
    assert _baselines(baselines) != accepted


def test_gate_vector_replay_gates_on_the_accepted_vector(suite, pytester: pytest.Pytester, tiny_model_dir: Path) -> None:
    write, run = suite
    write(extra='\n[[case]]\ntask = "tinytask"\ngate_vector = "replay"\n')
    run("--steer-update").assert_outcomes(passed=2)
    damaged = pytester.path / "damaged"
    assert perturb_main([str(tiny_model_dir), str(damaged), "--noise", "3", "--blocks", "1"]) == 0
    result = run(f"--steer-candidate=tinya={damaged}", "--steer-report=r.json")
    result.assert_outcomes(passed=2)
    cases = {c["id"]: c for c in _report(pytester.path / "r.json")["cases"]}
    gated = cases["tinya-task_vector-tinytask"]["result"]
    assert gated["per_item"]["steered"] == gated["replay"]["steered"]  # the gate saw the replayed vector
    assert gated["chosen"]["layer"] == gated["replay"]["setting"]["layer"]
    assert "extracted_chosen" in gated["diagnostics"]
    other = cases["tinya-task_vector-othertask"]["result"]
    assert other["replay"] is not None and "extracted_chosen" not in other["diagnostics"]


@pytest.mark.parametrize("damage", ["wrong-width", "two-dimensional", "nan"])
def test_gate_vector_replay_never_gates_on_a_fresh_vector_when_the_accepted_one_cannot_apply(
        suite, pytester: pytest.Pytester, damage: str) -> None:
    """A shipped vector that does not fit (its checksum re-recorded, so it loads) fails the case by name."""
    import torch

    from pytest_steer.storage.tensors import read_tensors, write_tensors

    write, run = suite
    write(extra='\n[[case]]\ntask = "tinytask"\ngate_vector = "replay"\n')
    run("--steer-update").assert_outcomes(passed=2)
    vector = pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.safetensors"
    tensors, metadata = read_tensors(vector)
    name = next(iter(tensors))
    good = tensors[name]
    tensors[name] = {"wrong-width": good[:-1], "two-dimensional": good.reshape(2, -1),
                     "nan": torch.full_like(good, float("nan"))}[damage]
    write_tensors(vector, tensors, {k: v for k, v in metadata.items() if k != "content_sha256"})
    stored = vector.with_suffix(".json")
    data = json.loads(stored.read_text())
    data["vector_sha256"] = read_tensors(vector)[1]["content_sha256"]
    stored.write_text(json.dumps(data))
    result = run("--steer-rerun", "-k", "tinytask")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines([f"*gate_vector = 'replay': the accepted vector *tinytask.safetensors cannot be applied*"])


def test_gate_vector_replay_needs_a_vector_method(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write(extra='\n[[case]]\nmethod = "dola"\ngate_vector = "replay"\n')
    (pytester.path / "steer_tiny.toml").write_text(
        (pytester.path / "steer_tiny.toml").read_text().replace('methods = ["task_vector"]', 'methods = ["task_vector", "dola"]'))
    result = run("--collect-only")
    result.stdout.fnmatch_lines(["*gate_vector: 'replay' needs a method that stores a vector*dola stores none*"])


def test_a_candidate_no_selected_case_uses_is_a_usage_error(suite) -> None:
    write, run = suite
    write()
    result = run("--steer-candidate=nosuch=smollm2-135m")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--steer-candidate nosuch=...: no selected case uses model 'nosuch' (models of the "
                                 "selected cases: tinya)*"])
    result = run("--steer-candidate=tinya=not-a-source")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'not-a-source' is not a packaged alias*"])


def _report(path: Path) -> dict:
    return json.loads(path.read_text())

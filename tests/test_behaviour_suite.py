"""CAA, a vector you bring and the side-effect control, end to end through pytester on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pytest_steer.judge.verdict import Gate, judge
from pytest_steer.record import CaseResult, SideEffect
from pytest_steer.storage.vector_file import write_gguf
from tests.test_caa import build_choice_model, choice_items

CASES = """
[defaults]
n_dev = 10
n_test = 16
threshold = -1.0
tolerance = 0.0
n_control = 12
control = "knowledge"

[methods.caa]
n_train = 20
multipliers = [1.0, 4.0]

[methods.byo]
vector = "{vector}"
strengths = [1.0, 2.0]

[models.tinyab]
path = "{model}"

[tasks.behaviour]
path = "behaviour.json"

[tasks.knowledge]
path = "knowledge.json"

[[suite]]
models = ["tinyab"]
methods = {methods}
tasks = ["behaviour"]
"""


@pytest.fixture(scope="module")
def choice_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_choice_model(tmp_path_factory.mktemp("choice") / "model")


@pytest.fixture
def behaviour(pytester: pytest.Pytester, choice_model: Path):
    (pytester.path / "behaviour.json").write_text(json.dumps(choice_items()))
    (pytester.path / "knowledge.json").write_text(json.dumps(choice_items(20, prefix="k")))
    g = torch.Generator().manual_seed(1)
    write_gguf(pytester.path / "happy.gguf", {1: torch.randn(32, generator=g), 2: torch.randn(32, generator=g)})

    def write(methods: str = '["caa", "byo"]', vector: str = "happy.gguf", extra: str = "") -> Path:
        path = pytester.path / "steer_behaviour.toml"
        path.write_text(CASES.format(vector=vector, model=choice_model, methods=methods) + extra)
        return path

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--steer-cache-dir={pytester.path / 'cache'}",
                                             "--steer-device=cpu", *args)

    return write, run


def test_caa_and_a_gguf_control_vector_are_gated_with_their_side_effect(behaviour, pytester: pytest.Pytester):
    write, run = behaviour
    write()
    result = run("--steer-update", "--steer-report=r.json", "--steer-html=page.html")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "side effect" in out and "knowledge" in out
    root = pytester.path / "baselines" / "tinyab"
    caa = json.loads((root / "caa" / "behaviour.json").read_text())
    byo = json.loads((root / "byo" / "behaviour.json").read_text())
    assert (root / "caa" / "behaviour.safetensors").is_file()  # the accepted CAA vector, replayed after updates
    for stored in (caa, byo):
        assert stored["side_effect"]["task"] == "knowledge" and len(stored["side_effect"]["items"]) == 12
        assert set(stored["metrics"]["secondary"]) == {"mass", "opposite"}
        assert len(stored["per_item"]["steered"]) == 16
    assert byo["chosen"]["layers"] == [1, 2] and byo["chosen"]["strength"] in (1.0, 2.0)
    assert byo["settings"]["vector"] == "happy.gguf"  # as the case file names it: the same in every checkout
    assert set(caa["chosen"]) == {"layer", "multiplier", "relative_depth"}
    report = json.loads((pytester.path / "r.json").read_text())
    for case in report["cases"]:
        side = case["verdict"]["side_effect"]
        assert side["task"] == "knowledge" and side["n"] == 12 and side["limit"] is None and not side["failed"]
    assert "side effect: knowledge" in (pytester.path / "page.html").read_text()
    # nothing changed: both reused and still passing; -m selects by method
    again = run("--steer-report=again.json")
    again.assert_outcomes(passed=2)
    assert all(c["result"]["reused"] for c in json.loads((pytester.path / "again.json").read_text())["cases"])
    run("-m", "byo", "--collect-only", "-q").stdout.fnmatch_lines(["*1/2 tests collected (1 deselected)*"])
    # the quick path replays the accepted CAA vector, with the same numbers and side effect
    quick = run("--steer-quick", "--steer-rerun", "-m", "caa", "--steer-report=quick.json")
    quick.assert_outcomes(passed=1, deselected=1)
    case = json.loads((pytester.path / "quick.json").read_text())["cases"][0]
    assert case["verdict"]["quick"] == "replay"
    assert case["result"]["per_item"] == caa["per_item"] and case["result"]["side_effect"] == caa["side_effect"]


def test_an_edited_vector_file_is_a_new_result(behaviour, pytester: pytest.Pytester):
    write, run = behaviour
    write(methods='["byo"]')
    run("--steer-update").assert_outcomes(passed=1)
    write_gguf(pytester.path / "happy.gguf", {1: torch.ones(32), 2: torch.ones(32)})
    result = run("--steer-report=r.json")
    case = json.loads((pytester.path / "r.json").read_text())["cases"][0]
    assert not case["result"]["reused"]  # recomputed with the new file, judged against the accepted one
    assert result.ret in (0, 1)


def test_vector_file_errors_fail_their_case_only(behaviour, pytester: pytest.Pytester):
    write, run = behaviour
    write(vector="missing.gguf")
    result = run()
    result.assert_outcomes(failed=2)  # the byo case: no file; the caa case: no baseline yet
    result.stdout.fnmatch_lines(["*steer_behaviour.toml: settings of tinyab-byo-behaviour.vector: no file at *missing.gguf*"])
    (pytester.path / "wide.gguf").write_bytes((pytester.path / "happy.gguf").read_bytes())
    write_gguf(pytester.path / "wide.gguf", {1: torch.ones(48)})
    write(methods='["byo"]', vector="wide.gguf")
    result = run("--steer-update")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*wide.gguf: the vector of layer 1 has 48 values; this model's residual stream is 32 wide*"])
    (pytester.path / "v.pt").write_bytes(b"not read")
    write(methods='["byo"]', vector="v.pt")
    run("--steer-update").stdout.fnmatch_lines(["*v.pt: a pickled file runs code when it is read*"])


def test_control_task_errors_name_the_field(behaviour, pytester: pytest.Pytester):
    write, run = behaviour
    (pytester.path / "pairs.json").write_text(json.dumps([{"input": "x", "output": "y"}] * 1))
    write(methods='["caa"]', extra='\n[tasks.pairs]\npath = "pairs.json"\n[[case]]\nmethod = "caa"\ncontrol = "pairs"\n')
    run("--collect-only").stdout.fnmatch_lines(["*case?0? (for tinyab-caa-behaviour).control: *pairs.json holds pairs items; "
                                                "a control task holds two-choice questions*"])
    write(methods='["caa"]', extra='\n[[case]]\nmethod = "caa"\nn_control = 500\n')
    run("--collect-only").stdout.fnmatch_lines(["*knowledge.json has 20 questions but n_control = 500*"])
    write(methods='["caa"]', extra='\n[[case]]\nmethod = "caa"\nmax_side_effect = 1.5\n')
    run("--collect-only").stdout.fnmatch_lines(["*max_side_effect: must be a number in [[]0, 1)*"])


def _with_side_effect(path: Path, unsteered: list[int], steered: list[int]) -> CaseResult:
    stored = CaseResult.from_baseline(json.loads(path.read_text()))
    items = tuple(f"k{i}" for i in range(len(unsteered)))
    return CaseResult(**{**stored.__dict__, "side_effect": SideEffect("knowledge", items, tuple(unsteered), tuple(steered))})


def test_max_side_effect_fails_a_significant_drop_above_it(behaviour, pytester: pytest.Pytester):
    write, run = behaviour
    write(methods='["byo"]')
    run("--steer-update").assert_outcomes(passed=1)
    path = pytester.path / "baselines" / "tinyab" / "byo" / "behaviour.json"
    harmful = _with_side_effect(path, [1] * 40, [1] * 20 + [0] * 20)  # 20 of 40 lost: drop 0.5, McNemar p ~ 2e-6
    slight = _with_side_effect(path, [1] * 40, [1] * 38 + [0] * 2)  # 2 lost: drop 0.05, not significant
    gate = Gate(-1.0, 0.0, None, "mean", max_side_effect=0.1)
    verdict = judge(harmful, gate, None, updating=False)
    assert not verdict.passed and verdict.side_effect is not None and verdict.side_effect.failed
    assert any(r.startswith("side effect: knowledge 1.000 -> 0.500 under steering: drop 0.500") and
               r.endswith("above max_side_effect 0.100") for r in verdict.reasons)
    assert judge(slight, Gate(-1.0, 0.0, None, "mean", max_side_effect=0.0), None, updating=False).passed
    assert judge(harmful, Gate(-1.0, 0.0, None, "mean", max_side_effect=0.6), None, updating=False).passed
    shown = judge(harmful, Gate(-1.0, 0.0, None, "mean"), None, updating=False)  # no limit: shown, never failed
    assert shown.passed and shown.side_effect is not None and shown.side_effect.drop == pytest.approx(0.5)

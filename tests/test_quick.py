"""`--steer-quick`: a case judged first by its accepted vector replayed at the accepted setting; only a replay that
regresses runs the full protocol, and then the verdict is the full run's (tiny model, candidate copies)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pytest_steer.judge.verdict import Gate, metrics_from_outcomes
from pytest_steer.models.perturb import main as perturb_main
from pytest_steer.record import CaseResult
from pytest_steer.run.session import quick_path, quick_regressions
from tests.test_candidate import _accept_everything
from tests.test_plugin import DOLA_FILE


def _cases(path: Path) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads(path.read_text())["cases"]}


def _stored(pytester: pytest.Pytester, task: str) -> dict:
    return json.loads((pytester.path / "baselines" / "tinya" / "task_vector" / f"{task}.json").read_text())


def _accepted_and_copied(suite, pytester: pytest.Pytester, model: Path, *damage: str):
    """Baselines accepted on the tiny model, and a copy of it (damaged by `perturb` options, if given)."""
    write, run = suite
    write()
    run("--steer-update").assert_outcomes(passed=2)
    copy = pytester.path / ("damaged" if damage else "copy")
    assert perturb_main([str(model), str(copy), *damage]) == 0
    return run, copy


def test_an_identical_copy_is_judged_by_the_replay_alone_with_the_full_runs_numbers(
    suite, pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    run, copy = _accepted_and_copied(suite, pytester, tiny_model_dir)

    result = run(f"--steer-candidate=tinya={copy}", "--steer-quick", "--steer-rerun", "--steer-report=quick.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*--steer-quick: 2 case(s) judged by their accepted vector replayed at the accepted "
                                 "setting (no extraction, no layer search); 0 ran the full protocol*"])
    for cid, case in _cases(pytester.path / "quick.json").items():
        stored = _stored(pytester, cid.rsplit("-", 1)[1])
        got = case["result"]
        assert case["verdict"]["quick"] == "replay" and got["diagnostics"]["quick"] is True
        assert got["curves"] == {}  # no dev search ran
        # the accepted vector on the same weights: every per-item outcome and score the full protocol gave
        assert got["per_item"] == stored["per_item"]
        for key in ("unsteered", "steered", "icl", "delta"):
            assert got["metrics"][key] == stored["metrics"][key]
        assert got["chosen"]["layer"] == stored["chosen"]["layer"]
        assert got["replay"]["steered"] == stored["per_item"]["steered"]

    # stored under its own inputs: a second quick run loads no model, a plain run never takes it for a full result
    again = run(f"--steer-candidate=tinya={copy}", "--steer-quick", "--steer-report=again.json")
    again.assert_outcomes(passed=2)
    assert all(c["result"]["reused"] for c in _cases(pytester.path / "again.json").values())
    plain = run(f"--steer-candidate=tinya={copy}", "--steer-report=plain.json")
    plain.assert_outcomes(passed=2)
    for case in _cases(pytester.path / "plain.json").values():
        assert "quick" not in case["result"]["diagnostics"] and case["result"]["curves"]
        assert case["verdict"]["quick"] == ""


def test_a_replay_that_regresses_runs_the_full_protocol_and_gives_the_full_verdict(
    suite, pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    run, damaged = _accepted_and_copied(suite, pytester, tiny_model_dir, "--noise", "3", "--blocks", "0-2")
    _accept_everything(pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.json")

    full = run(f"--steer-candidate=tinya={damaged}", "--steer-report=full.json")
    full.assert_outcomes(passed=1, failed=1)
    quick = run(f"--steer-candidate=tinya={damaged}", "--steer-quick", "--steer-rerun", "--steer-report=quick.json")
    quick.assert_outcomes(passed=1, failed=1)
    quick.stdout.fnmatch_lines([
        "*--steer-quick: 1 case(s) judged by their accepted vector replayed*; 1 ran the full protocol*",
        "*tinya-task_vector-tinytask: the replay regressed: steered 0.000 vs accepted 1.000*",
    ])
    a, b = _cases(pytester.path / "full.json"), _cases(pytester.path / "quick.json")
    regressed = b["tinya-task_vector-tinytask"]
    assert regressed["verdict"]["quick"].startswith("full: the replay regressed")
    # the regressed case ran in full: the very numbers and reasons of the run without --steer-quick
    assert regressed["result"]["per_item"] == a["tinya-task_vector-tinytask"]["result"]["per_item"]
    assert regressed["result"]["chosen"] == a["tinya-task_vector-tinytask"]["result"]["chosen"]
    assert regressed["verdict"]["reasons"] == a["tinya-task_vector-tinytask"]["verdict"]["reasons"]
    assert regressed["result"]["curves"]
    for cid in a:
        assert a[cid]["verdict"]["passed"] == b[cid]["verdict"]["passed"]


@pytest.mark.parametrize("shortcut", ["quick", "sequential"])
def test_a_shortcut_never_writes_a_baseline(suite, shortcut: str) -> None:
    write, run = suite
    write()
    result = run(f"--steer-{shortcut}", "--steer-update")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--steer-{shortcut} cannot be combined with --steer-update*"])


def test_a_method_without_a_stored_vector_runs_in_full_under_quick(
    suite, pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    write, run = suite
    write()
    quiz = pytester.path / "quiz.json"
    quiz.write_text(json.dumps([
        {"question": f"w{i}", "best_answer": f"v{i}", "correct_answers": [f"v{i}"], "incorrect_answers": [f"w{i + 1}"]}
        for i in range(8)
    ]))
    (pytester.path / "steer_dola.toml").write_text(DOLA_FILE.format(model=tiny_model_dir, quiz=quiz))
    run("--steer-update").assert_outcomes(passed=4)
    result = run("--steer-quick", "--steer-rerun", "--steer-report=r.json")
    result.assert_outcomes(passed=4)
    paths = {cid: c["verdict"]["quick"] for cid, c in _cases(pytester.path / "r.json").items()}
    assert paths == {"tinya-task_vector-tinytask": "replay", "tinya-task_vector-othertask": "replay",
                     "tiny-dola-quiz-lower": "full", "tiny-dola-quiz-upper": "full"}
    result.stdout.fnmatch_lines(["*--steer-quick: 2 case(s) judged by their accepted vector*; 2 ran the full protocol"])


# ---------------------------------------------------------------- the rule alone


def _result(stored: CaseResult, steered: list[int], items: tuple[str, ...] | None = None) -> CaseResult:
    outcomes = replace(stored.outcomes, steered=tuple(steered), items=items or stored.outcomes.items)
    metrics = metrics_from_outcomes(np.asarray(outcomes.unsteered, float), np.asarray(steered, float),
                                    None if outcomes.icl is None else np.asarray(outcomes.icl, float), 0)
    return replace(stored, outcomes=outcomes, metrics=metrics, diagnostics={"quick": True})


@pytest.fixture
def accepted() -> CaseResult:
    root = Path(__file__).resolve().parents[1] / "baselines" / "smollm2-135m" / "task_vector"
    data = json.loads(next(iter(sorted(root.glob("*.json")))).read_text())
    return CaseResult.from_baseline(data)


def test_the_quick_rule_settles_only_what_the_full_protocol_would_pass_alike(accepted: CaseResult) -> None:
    gate = Gate(threshold=0.1, tolerance=None, min_recovery=None, gate="mean", multiple="holm", comparisons=144)
    same = list(accepted.outcomes.steered)
    assert quick_regressions(_result(accepted, same), accepted, gate) == ""
    gained = same.copy()
    gained[same.index(0)] = 1
    assert quick_regressions(_result(accepted, gained), accepted, gate) == ""
    # one item lost is noise to the regression rule, but the re-extracted vector may lose more: the full protocol runs
    one_lost = same.copy()
    one_lost[same.index(1)] = 0
    assert quick_regressions(_result(accepted, one_lost), accepted, gate).startswith("the replay lost ground (steered")
    # the model's own scores lost ground while the replay held: the re-extracted vector may not hold
    weaker = _result(accepted, same)
    icl = list(weaker.outcomes.icl)
    icl[icl.index(1)] = 0
    weaker = replace(weaker, outcomes=replace(weaker.outcomes, icl=tuple(icl)), metrics=metrics_from_outcomes(
        np.asarray(weaker.outcomes.unsteered, float), np.asarray(same, float), np.asarray(icl, float), 0))
    assert "the 5-shot score lost ground" in quick_regressions(weaker, accepted, gate)
    all_lost = [0] * len(same)
    why = quick_regressions(_result(accepted, all_lost), accepted, gate)
    assert why.startswith("the replay regressed: steered 0.000 vs accepted")
    # a drop the run's correction would rule on (p between the sure level and alpha) is a regression to the quick rule
    lenient = Gate(threshold=0.1, tolerance=0.0, min_recovery=None, gate="mean", multiple="holm", comparisons=10**6)
    few_lost = same.copy()
    for k in [i for i, v in enumerate(same) if v == 1][:7]:
        few_lost[k] = 0
    assert "the replay regressed" in quick_regressions(_result(accepted, few_lost), accepted, lenient)
    # below the threshold: the full search may find a setting that passes
    strict = Gate(threshold=0.9, tolerance=None, min_recovery=None, gate="mean", multiple="holm", comparisons=144)
    assert "does not pass the gate" in quick_regressions(_result(accepted, same), accepted, strict)
    moved = tuple(reversed(accepted.outcomes.items))
    assert "cannot be paired" in quick_regressions(_result(accepted, same, moved), accepted, gate)


def test_quick_path_names() -> None:
    class R:
        diagnostics: dict = {"quick": True}

    assert quick_path(R(), None) == "replay"  # type: ignore[arg-type]
    R.diagnostics = {}
    assert quick_path(R(), "the replay regressed: x") == "full: the replay regressed: x"  # type: ignore[arg-type]
    assert quick_path(R(), None) == "full"  # type: ignore[arg-type]

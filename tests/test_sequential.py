"""`--steer-sequential`: the confidence sequence covers the truth at every look, the rule stops only when the gate
is decided and no regression is possible, and a DoLa run stops early with the items it used in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pytest_steer.judge.sequential import Rule, betting_bounds, difference_series, stop_at
from pytest_steer.tasks.data import sequential_order
from tests.test_plugin import DOLA_FILE


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_the_sequence_covers_the_true_mean_at_every_look(p: float) -> None:
    rng = np.random.default_rng(1)
    level, runs, misses = 0.1, 300, 0
    for _ in range(runs):
        x = (rng.random(80) < p).astype(float)
        lower, upper = betting_bounds(x, level)
        misses += bool(np.any((lower > p) | (upper < p)))  # missed at any look: an anytime error
    assert misses / runs <= level


def test_the_bounds_shrink_and_never_widen() -> None:
    x = (np.random.default_rng(2).random(120) < 0.6).astype(float)
    lower, upper = betting_bounds(x, 0.05)
    assert np.all(np.diff(lower) >= 0) and np.all(np.diff(upper) <= 0)
    assert upper[-1] - lower[-1] < upper[7] - lower[7]
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        betting_bounds(np.array([0.5, 1.5]), 0.05)


def test_difference_bounds_are_on_the_difference_scale() -> None:
    same = np.ones(64)
    low, high = difference_series(same, same, 0.05)
    assert -0.3 < low[-1] < 0 < high[-1] < 0.3
    low, high = difference_series(np.ones(64), np.zeros(64), 0.05)
    assert low[-1] > 0.7 and high[-1] == pytest.approx(1.0)


def test_a_stop_computed_in_one_pass_is_the_stop_of_look_by_look() -> None:
    rng = np.random.default_rng(4)
    rule = Rule(threshold=0.1, tolerance=0.2, level=0.05)
    for _ in range(20):
        u = (rng.random(96) < 0.2).astype(float)
        s = np.maximum(u, (rng.random(96) < rng.random()).astype(float))
        accepted = {"steered": s.copy(), "unsteered": u.copy()}
        rows = sequential_order(96, 7)
        looked = next((k for k in range(8, 96, 8) if rule.look(u[rows[:k]], s[rows[:k]],
                                                                {n: v[rows[:k]] for n, v in accepted.items()}).decided), 96)
        assert stop_at(rule, u, s, accepted, seed=7).items == looked


def test_the_rule_stops_early_only_on_a_clear_verdict_without_regression() -> None:
    rng = np.random.default_rng(3)
    n = 160
    unsteered = (rng.random(n) < 0.2).astype(float)
    steered = np.maximum(unsteered, (rng.random(n) < 0.8).astype(float))
    rule = Rule(threshold=0.1, tolerance=0.15, level=0.05)
    accepted = {"steered": steered.copy(), "unsteered": unsteered.copy()}
    assert stop_at(rule, unsteered, steered, accepted, seed=0).items < n  # same model, a large improvement: decided early
    assert stop_at(rule, unsteered, steered, None, seed=0).items < n
    assert stop_at(rule, unsteered, steered, None, seed=0).gate == "pass"
    # the steered score lost a third of its items: a regression is never decided on part of the items
    lost = steered.copy()
    lost[np.flatnonzero(lost)[::3]] = 0
    assert stop_at(rule, unsteered, lost, accepted, seed=0).items == n
    # an improvement right at the threshold cannot be decided either way
    near = unsteered.copy()
    near[np.flatnonzero(near == 0)[: int(0.1 * n)]] = 1
    assert stop_at(rule, unsteered, near, None, seed=0).items == n


def test_the_order_is_fixed_for_a_seed() -> None:
    assert sequential_order(20, 0) == sequential_order(20, 0) != sequential_order(20, 1)
    assert sorted(sequential_order(20, 0)) == list(range(20))


def _write(pytester: pytest.Pytester, model: Path, tolerance: str) -> None:
    quiz = pytester.path / "quiz.json"
    quiz.write_text(json.dumps([
        {"question": f"w{i}", "best_answer": f"v{i}", "correct_answers": [f"v{i}"], "incorrect_answers": [f"w{i + 1}"]}
        for i in range(30)
    ]))
    text = DOLA_FILE.replace("n_test = 6", f"n_test = 24\ntolerance = {tolerance}")
    (pytester.path / "steer_dola.toml").write_text(text.format(model=model, quiz=quiz))


def _cases(path: Path) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads(path.read_text())["cases"]}


def test_a_sequential_dola_run_stops_early_and_judges_the_items_it_used(
    suite, pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    _, run = suite
    _write(pytester, tiny_model_dir, "0.7")
    run("--steer-update").assert_outcomes(passed=2)
    result = run("--steer-sequential", "--steer-report=seq.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*--steer-sequential: 2 case(s) stopped early; 16 of 48 test items scored*"])
    baselines = pytester.path / "baselines" / "tiny" / "dola"
    for cid, case in _cases(pytester.path / "seq.json").items():
        got = case["result"]
        assert got["diagnostics"]["sequential"] == {"items": 8, "of": 24}
        stored = json.loads((baselines / f"quiz-{cid.rsplit('-', 1)[1]}.json").read_text())
        where = {item: k for k, item in enumerate(stored["per_item"]["items"])}
        # every item it scored has the full run's outcome, and the pairing with the accepted result uses them
        for k, item in enumerate(got["per_item"]["items"]):
            assert got["per_item"]["steered"][k] == stored["per_item"]["steered"][where[item]]
            assert got["per_item"]["unsteered"][k] == stored["per_item"]["unsteered"][where[item]]
        steered = next(c for c in case["verdict"]["changes"] if c["score"] == "steered")
        assert steered["n"] == 8 and steered["test"] and steered["difference"] == 0.0
    # a result of the stopping rule is never taken for a full one
    plain = run("--steer-report=plain.json")
    plain.assert_outcomes(passed=2)
    assert all("sequential" not in c["result"]["diagnostics"] for c in _cases(pytester.path / "plain.json").values())


def test_a_sequential_run_that_cannot_rule_out_a_regression_scores_every_item(
    suite, pytester: pytest.Pytester, tiny_model_dir: Path
) -> None:
    _, run = suite
    _write(pytester, tiny_model_dir, "0.01")  # no part of 24 items can show a drop stays within 0.01
    run("--steer-update").assert_outcomes(passed=2)
    result = run("--steer-sequential", "--steer-report=seq.json")
    result.assert_outcomes(passed=2)
    for case in _cases(pytester.path / "seq.json").values():
        assert case["result"]["diagnostics"]["sequential"] == {"items": 24, "of": 24}

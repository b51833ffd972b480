"""The field-by-field comparison of bench/ (thread counts, process layouts, baselines): exact everywhere except
graded secondary metrics, within a stated bound that no default case's verdict depends on."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_steer.record import CaseResult

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from compare_baselines import GRADED_BOUND, field_problems, graded  # noqa: E402


def _dola() -> CaseResult:
    return CaseResult.from_baseline(json.loads((ROOT / "baselines/gemma3-270m/dola/truthful-mc-lower.json").read_text()))


def test_only_secondary_graded_fields_have_a_bound() -> None:
    assert graded("metrics.secondary.mc2.steered") and graded("per_item.mc2_steered[3]")
    for exact in ("metrics.steered", "metrics.delta", "per_item.steered[0]", "per_item.unsteered[1]", "chosen.layer",
                  "curves.premature_share[2]"):
        assert not graded(exact)


@pytest.mark.parametrize("step, differs", [(GRADED_BOUND / 2, False), (GRADED_BOUND * 3, True)])
def test_a_graded_difference_passes_within_the_bound_and_fails_beyond(step: float, differs: bool) -> None:
    stored = _dola()
    unsteered, steered = stored.outcomes.secondary["mc2"]
    moved = tuple(v + step if v < 0.5 else v - step for v in steered)
    # a run whose graded outcomes moved by rounding (its means are recomputed from them, as a run's are)
    run = replace(stored, outcomes=replace(stored.outcomes, secondary={**stored.outcomes.secondary,
                                                                       "mc2": (unsteered, moved)}))
    assert bool(field_problems(run, stored, [])) is differs


def test_a_gated_outcome_is_never_within_a_bound() -> None:
    stored = _dola()
    steered = stored.outcomes.steered
    run = replace(stored, outcomes=replace(stored.outcomes, steered=(1 - steered[0], *steered[1:])))
    assert any(p.startswith("per_item.steered[0]") for p in field_problems(run, stored, []))


def test_no_default_case_gates_on_a_graded_metric() -> None:
    """So a graded difference within the bound cannot change any default verdict."""
    for path in sorted((ROOT / "baselines").rglob("*.json")):
        data = json.loads(path.read_text())
        for arm in ("steered", "unsteered"):
            assert set(data["per_item"][arm]) <= {0, 1}, f"{path} gates on graded outcomes"

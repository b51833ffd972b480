"""The side-effect control: the case's control questions scored without and with the chosen steering."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pytest_steer.methods.base import ControlOutcome, RunContext
from pytest_steer.methods.choices import ChoiceSet, score_choices
from pytest_steer.methods.hooks import HookReport, Intervene
from pytest_steer.methods.scoring import TokenCounter
from pytest_steer.models.loader import ModelHandle

# builds the hooks of `points` (one intervention each) on `vectors`, reporting into the dict
Builder = Callable[[ModelHandle, list[Any], Any, dict[int, HookReport]], Intervene]


def control_outcome(handle: ModelHandle, context: RunContext, build: Builder, points: list[Any], vectors: Any,
                    settings: Any, counter: TokenCounter, last_token_only: bool = True) -> ControlOutcome | None:
    """The control questions (`context.control`) unsteered and under intervention 0 of `points`; None when the
    case has no control."""
    if context.control is None:
        return None
    data = ChoiceSet.build(handle, context.control.items)
    context.report(f"side-effect control ({context.control.task})", 0, 1)
    common = {"batch_size": settings.batch_size, "max_rows": settings.max_rows, "last_token_only": last_token_only}
    unsteered = score_choices(handle, data, 1, None, counter, **common).column(0)
    reports: dict[int, HookReport] = {}
    steered = score_choices(handle, data, 1, build(handle, points, vectors, reports), counter, **common).column(0)
    if not any(r.fired_and_changed for r in reports.values()):
        raise RuntimeError("the steering hooks did not fire or changed nothing on the control questions")
    context.report(f"side-effect control ({context.control.task})", 1, 1)
    return ControlOutcome(context.control.task, data.texts(), unsteered.chose, steered.chose)

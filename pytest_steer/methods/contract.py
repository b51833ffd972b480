"""The method contract: what a steering method provides, one Protocol per capability (no torch imported).

    Method        runs one case: `settings_type`, `prepare`, `run`              (required)
    SharesWork    runs several cases of one task in one pass: `run_many`        (optional)
    Replays       applies a stored vector at a stored setting: `replay`         (optional; enables replay)
    Quick         judges a case by its stored vector alone: `quick`             (optional; enables --steer-quick)
    has_parts     scores a split in parts: `run_part` and `combine`             (optional; shares a group across processes)
    side_effects  scores the control task under its steering (`RunContext.control` -> `MethodOutcome.control`)

And what the session reads from a method's settings, where present:

    Batched       `batch_size` and `max_rows`: shrunk together after an out-of-memory error
    ChecksTask    `check_task(task, n_dev, n_test, where)`: a task too small fails when the case file is read

A registered method is checked against `Method` when it is first looked up, with an error naming what it lacks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from pytest_steer.methods.base import MethodOutcome, RunContext
    from pytest_steer.models.loader import ModelHandle
    from pytest_steer.tasks import Task


# --steer-sequential: (items scored so far, their unsteered and steered outcomes) -> the case's verdict is decided.
# A method whose test items are scored one by one declares `scores_sequentially = True` and may stop once every
# look in `RunContext.sequential` says so (its outcome then holds only the items it scored).
Decides = Callable[[list[str], "np.ndarray", "np.ndarray"], bool]


@runtime_checkable
class Method(Protocol):
    """A steering method: its settings type, its split of a task, and one run on one model."""

    settings_type: type

    def prepare(self, task: Task, n_dev: int, n_test: int, seed: int) -> tuple[Any, dict[str, int]]:
        """The splits the run selects on and reports on, and their sizes for the record."""
        ...

    def run(self, handle: ModelHandle, task: Task, splits: Any, settings: Any, context: RunContext) -> MethodOutcome:
        """One case on one loaded model: per-item outcomes, what was chosen, curves, vectors."""
        ...


@runtime_checkable
class SharesWork(Protocol):
    """Cases of one task that differ only in their settings run in one pass (one outcome per settings)."""

    def run_many(self, handle: ModelHandle, task: Task, splits: Any, settings: list[Any],
                 context: RunContext) -> list[MethodOutcome]: ...


@runtime_checkable
class Replays(Protocol):
    """A stored vector (the accepted one) applied at a stored setting; per-item steered outcomes on the test split.

    Raises `methods.search.ReplayError` when the vector does not fit the model (recorded, not raised further)."""

    def replay(self, handle: ModelHandle, splits: Any, settings: Any, tensors: dict[str, Any],
               chosen: dict[str, Any]) -> np.ndarray: ...


@runtime_checkable
class Quick(Protocol):
    """The case's outcome from its accepted vector at the accepted setting, without searching (`--steer-quick`):
    the steered, unsteered and (where the method has one) reference outcomes on the test split. The steered
    outcomes must be exactly what `replay` gives, the unsteered exactly what `run` gives.

    Raises `methods.search.ReplayError` when the vector does not fit the model (the case then runs in full)."""

    def quick(self, handle: ModelHandle, splits: Any, settings: Any, tensors: dict[str, Any], chosen: dict[str, Any],
              context: RunContext) -> MethodOutcome: ...


@runtime_checkable
class Batched(Protocol):
    batch_size: int
    max_rows: int


@runtime_checkable
class ChecksTask(Protocol):
    def check_task(self, task: Task, n_dev: int, n_test: int, where: str) -> None: ...


def missing(obj: object) -> list[str]:
    """What `obj` (a method class or instance) lacks of the `Method` contract; empty when it has it all."""
    lacking = [f"`{name}`" for name in ("prepare", "run") if not callable(getattr(obj, name, None))]
    settings = getattr(obj, "settings_type", None)
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        lacking.insert(0, "`settings_type` (a dataclass)")
    return lacking


def shares_work(obj: object) -> bool:
    return callable(getattr(obj, "run_many", None))


def replays(obj: object) -> bool:
    return callable(getattr(obj, "replay", None))


def quick(obj: object) -> bool:
    return callable(getattr(obj, "quick", None))


def has_parts(obj: object) -> bool:
    """Scores a split in parts: `run_part(handle, task, splits, settings_list, rows, context)` -> one JSON-able part
    per settings, and `combine(handle, task, splits, settings_list, parts_per_settings, context)` -> the outcomes
    of the whole split, exactly as `run_many` gives them (with the side-effect control of `context`, where the
    method scores one). Processes running cases of one group share its parts."""
    return callable(getattr(obj, "run_part", None)) and callable(getattr(obj, "combine", None))


def scores_sequentially(obj: object) -> bool:
    return getattr(obj, "scores_sequentially", False) is True


def scores_control(obj: object) -> bool:
    """Declares `side_effects = True`: its runs score `context.control` under the chosen steering and return it as
    `MethodOutcome.control` (the side-effect gate, `max_side_effect`)."""
    return getattr(obj, "side_effects", False) is True

"""What every steering method receives and returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pytest_steer.methods.contract import Decides
from pytest_steer.models.loader import ModelHandle
from pytest_steer.storage.tensors import VectorCache
from pytest_steer.tasks import Choice, Task

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Control:
    """The side-effect control: two-choice questions with a right answer, scored under the case's steering."""

    task: str
    items: tuple[Choice, ...]


@dataclass
class ControlOutcome:
    """The control questions' per-item outcomes (1: the right letter preferred) without and with the steering."""

    task: str
    items: list[str]
    unsteered: np.ndarray
    steered: np.ndarray


@dataclass
class RunContext:
    """Shared services for one method run."""

    cache: VectorCache
    seed: int
    progress: Progress | None = None
    shared: VectorCache | None = None  # this run's scores shared between methods (None: nothing shared)
    # --steer-sequential: one per settings given to run / run_many, in order; a method that scores its test items
    # one by one may stop once every one of them says the verdict is decided (None: score every item)
    sequential: list[Decides] | None = None
    control: Control | None = None  # score these under the chosen steering too (a method that can: MethodOutcome.control)

    def report(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(label, done, total)


@dataclass
class MethodOutcome:
    """Per-item test outcomes (unsteered, steered, 5-shot ICL) plus what was chosen and why.

    Outcomes are 0/1 for accuracy-like metrics and in [0, 1] for graded ones (DoLa's MC2);
    `secondary` holds further per-item metrics as (unsteered, steered) pairs, judged by none.
    """

    unsteered: np.ndarray
    steered: np.ndarray
    icl: np.ndarray | None
    chosen: dict[str, Any]
    curves: dict[str, list[Any]]
    vectors: dict[str, torch.Tensor]
    vector_metadata: dict[str, str]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    test_items: list[str] = field(default_factory=list)
    metric: str = "accuracy"
    secondary: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase (run only, never stored in a baseline)
    control: ControlOutcome | None = None  # the side-effect control under the chosen steering, where scored


class Phases:
    """Wall seconds of consecutive phases of a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now

"""What every steering method receives and returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pytest_steer.models.loader import ModelHandle
from pytest_steer.store import VectorCache

Progress = Callable[[str, int, int], None]


@dataclass
class RunContext:
    """Shared services for one method run."""

    cache: VectorCache
    seed: int
    progress: Progress | None = None


@dataclass(frozen=True)
class TaskInput:
    """A case's task data as its method reads it, and what the record says about it."""

    data: Any  # the loaded task (word pairs, questions, passages)
    splits: Any  # what the method selects on and reports on
    source: str
    sha256: str
    items: int
    counts: dict[str, int]


@dataclass
class MethodOutcome:
    """Per-item test outcomes (unsteered, steered, ceiling) plus what was chosen and why.

    Outcomes are 0/1 for accuracy-like metrics and in [0, 1] for graded ones (DoLa's MC2);
    `secondary` holds further per-item metrics as (unsteered, steered) pairs, judged by none.
    """

    unsteered: np.ndarray
    steered: np.ndarray
    ceiling: np.ndarray | None
    chosen: dict[str, Any]
    curves: dict[str, list[float]]
    vectors: dict[str, torch.Tensor]
    vector_metadata: dict[str, str]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    test_items: list[str] = field(default_factory=list)
    metric: str = "accuracy"
    secondary: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class Method(Protocol):
    """A steering method: its task loader, settings parsing and one run on one model and task."""

    name: str
    settings_type: type

    def prepare(self, name: str, path: Path, n_dev: int, n_test: int, seed: int) -> TaskInput: ...

    def run(self, handle: ModelHandle, data: Any, splits: Any, settings: Any, context: RunContext) -> MethodOutcome: ...


def method_settings(method: Method, data: Mapping[str, Any], where: str) -> Any:
    from pytest_steer.settings import build_settings

    return build_settings(method.settings_type, data, where)

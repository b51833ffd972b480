"""What every steering method receives and returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from pytest_steer.models.loader import ModelHandle
from pytest_steer.store import VectorCache
from pytest_steer.tasks import Splits, Task

Progress = Callable[[str, int, int], None]


@dataclass
class RunContext:
    """Shared services for one method run."""

    cache: VectorCache
    seed: int
    progress: Progress | None = None


@dataclass
class MethodOutcome:
    """Per-item test outcomes (unsteered, steered, ceiling) plus what was chosen and why."""

    unsteered: np.ndarray
    steered: np.ndarray
    ceiling: np.ndarray | None
    chosen: dict[str, Any]
    curves: dict[str, list[float]]
    vectors: dict[str, torch.Tensor]
    vector_metadata: dict[str, str]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    test_items: list[str] = field(default_factory=list)


class Method(Protocol):
    """A steering method: settings parsing plus one run on one model and task."""

    name: str
    settings_type: type

    def run(
        self, handle: ModelHandle, task: Task, splits: Splits, settings: Any, context: RunContext
    ) -> MethodOutcome: ...


def method_settings(method: Method, data: Mapping[str, Any], where: str) -> Any:
    from pytest_steer.settings import build_settings

    return build_settings(method.settings_type, data, where)

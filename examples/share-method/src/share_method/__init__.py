"""A toy steering method for pytest-steer: 'steers' the first `share` of the test items.

It exercises the plugin's mechanics (registration, caching, storing, judging, reporting), not a model: the
per-item outcomes it returns are fixed by its setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pytest_steer.methods.base import MethodOutcome
from pytest_steer.methods.presentation import Presentation
from pytest_steer.tasks import split_task

SCALE = 1.0  # an edit here is an edit of the method: its stored results are recomputed


@dataclass(frozen=True)
class ShareSettings:
    share: float = 0.5


def _share(result) -> str:  # type: ignore[no-untyped-def]
    return f"{result.chosen['share']:.0%} of items"


class ShareMethod:
    """`settings_type`, `prepare`, `run`, and a presentation of its own (one column, the default figures)."""

    settings_type = ShareSettings
    presentation = Presentation(columns=(("steered share", _share),), terminal=(("share", _share),),
                                drift_keys=("share",))

    def prepare(self, task, n_dev, n_test, seed):  # type: ignore[no-untyped-def]
        splits = split_task(task, n_dev, n_test, seed)
        return splits, {"dev": len(splits.dev), "test": len(splits.test)}

    def run(self, handle, task, splits, settings, context):  # type: ignore[no-untyped-def]
        n = len(splits.test)
        steered = (np.arange(n) < settings.share * SCALE * n).astype(float)
        curve = [round(float(s), 3) for s in np.linspace(0, settings.share, 5)]
        return MethodOutcome(unsteered=np.zeros(n), steered=steered, icl=None, chosen={"share": settings.share},
                             curves={"share_sweep": curve}, vectors={}, vector_metadata={},
                             test_items=[p.input for p in splits.test])

"""Running a suite: the run's controller and items, options, the session that computes and judges cases, devices,
progress bars."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_steer.run.controller import SteerRun

RUN_KEY = pytest.StashKey["SteerRun"]()


def run_of(config: pytest.Config) -> SteerRun:
    """This process's `SteerRun` (set up in `pytest_configure`)."""
    return config.stash[RUN_KEY]

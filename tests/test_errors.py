"""One error base: every exception class the plugin defines is a SteerError, so a case reports it as one line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest_steer
from pytest_steer.errors import SteerError

# failures of the gate itself (pytest's assertion machinery reports them) and a private helper
NOT_ERRORS = {"SteerFailure", "SteerRegression", "_PathError"}


def test_every_exception_the_plugin_defines_is_a_steer_error() -> None:
    found = []
    for info in pkgutil.walk_packages(pytest_steer.__path__, "pytest_steer."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name:
                found.append(obj)
                if name not in NOT_ERRORS:
                    assert issubclass(obj, SteerError), f"{info.name}.{name} is not a SteerError"
    assert len(found) >= 20

"""The method registry: the built-ins plus any package's `pytest_steer.methods` entry points.

Entries are resolved lazily: collecting case files needs only a method's name and settings
type; the method's module (and torch) is imported when a case of it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from pytest_steer.methods.settings import DolaSettings, FunctionVectorSettings, TaskVectorSettings

if TYPE_CHECKING:
    from pytest_steer.methods.base import Method

ENTRY_POINT_GROUP = "pytest_steer.methods"


class RegistryError(Exception):
    """A registered method cannot be loaded or does not look like a method."""


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its name, settings type and where its implementation lives."""

    name: str
    settings_type: type
    target: str  # "module:attribute" of the method class (or instance)
    shares_work: bool = False  # has `run_many`: cases differing only in settings run in one pass
    replays: bool = False  # has `replay`: a stored (accepted) vector can be applied to another model

    def code(self) -> str:
        """The identity of the code that computes this method's results and vectors (`identity.code_identity`)."""
        from pytest_steer.identity import code_identity

        return code_identity(self.target)

    def load(self) -> Method:
        module, _, attr = self.target.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        return obj() if isinstance(obj, type) else obj


_BUILTINS = (
    MethodEntry("task_vector", TaskVectorSettings, "pytest_steer.methods.task_vector:TaskVectorMethod", replays=True),
    MethodEntry("function_vector", FunctionVectorSettings, "pytest_steer.methods.function_vector:FunctionVectorMethod",
                replays=True),
    MethodEntry("dola", DolaSettings, "pytest_steer.methods.dola:DolaMethod", shares_work=True),
)


def _from_entry_point(ep: object) -> MethodEntry:
    name, value = ep.name, ep.value  # type: ignore[attr-defined]
    try:
        obj = ep.load()  # type: ignore[attr-defined]
    except Exception as exc:  # a broken third-party package must name itself
        raise RegistryError(f"entry point {ENTRY_POINT_GROUP}:{name} = {value!r} failed to load: {exc}") from exc
    settings_type = getattr(obj, "settings_type", None)
    if not isinstance(settings_type, type) or not callable(getattr(obj, "run", None)) or not callable(getattr(obj, "prepare", None)):
        raise RegistryError(
            f"entry point {ENTRY_POINT_GROUP}:{name} = {value!r} is not a method: expected a class with "
            "`settings_type` (a dataclass), `prepare` and `run`"
        )
    return MethodEntry(name, settings_type, value, shares_work=callable(getattr(obj, "run_many", None)),
                       replays=callable(getattr(obj, "replay", None)))


@cache
def methods() -> dict[str, MethodEntry]:
    """Every registered method by name (built-ins first; an entry point cannot replace one)."""
    found = {entry.name: entry for entry in _BUILTINS}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = _from_entry_point(ep)
    return found


@cache
def load_method(name: str) -> Method:
    """The method implementation registered under `name` (imports its module)."""
    return methods()[name].load()

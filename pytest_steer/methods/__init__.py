"""The method registry: the built-ins plus any package's `pytest_steer.methods` entry points.

Entries are resolved lazily: collecting case files needs only a method's name and settings
type; the method's module (and torch) is imported when a case of it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from pytest_steer.errors import SteerError
from pytest_steer.methods.settings import (
    CaaSettings, DolaSettings, FunctionVectorSettings, TaskVectorSettings, VectorSettings,
)

if TYPE_CHECKING:
    from pytest_steer.methods.contract import Method

ENTRY_POINT_GROUP = "pytest_steer.methods"


class RegistryError(SteerError):
    """A registered method cannot be loaded or does not look like a method."""


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its name, settings type and where its implementation lives."""

    name: str
    settings_type: type
    target: str  # "module:attribute" of the method class (or instance)
    shares_work: bool = False  # has `run_many`: cases differing only in settings run in one pass
    replays: bool = False  # has `replay`: a stored (accepted) vector can be applied to another model
    parts: bool = False  # has `run_part` and `combine`: processes share a group's split in parts
    side_effects: bool = False  # scores the side-effect control task under its steering (`RunContext.control`)
    shows: str = ""  # "module:attribute" of its Presentation; "" = the method class's `presentation` attribute

    def presentation(self) -> object:
        """How its results are shown (`methods.presentation.Presentation`), or None for the generic rendering."""
        module, _, attr = (self.shows or self.target).partition(":")
        found = getattr(importlib.import_module(module), attr)
        return found if self.shows else getattr(found, "presentation", None)

    def code(self) -> str:
        """The identity of the code that computes this method's results and vectors (`identity.code_identity`)."""
        from pytest_steer.storage.identity import code_identity

        return code_identity(self.target)

    def load(self) -> Method:
        module, _, attr = self.target.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        return obj() if isinstance(obj, type) else obj


_BUILTINS = (
    MethodEntry("task_vector", TaskVectorSettings, "pytest_steer.methods.task_vector:TaskVectorMethod", replays=True,
                side_effects=True, shows="pytest_steer.methods.presentation:TASK_VECTOR"),
    MethodEntry("function_vector", FunctionVectorSettings, "pytest_steer.methods.function_vector:FunctionVectorMethod",
                replays=True, side_effects=True, shows="pytest_steer.methods.presentation:FUNCTION_VECTOR"),
    MethodEntry("dola", DolaSettings, "pytest_steer.methods.dola:DolaMethod", shares_work=True, parts=True,
                side_effects=True, shows="pytest_steer.methods.presentation:DOLA"),
    MethodEntry("caa", CaaSettings, "pytest_steer.methods.caa:CaaMethod", replays=True, side_effects=True,
                shows="pytest_steer.methods.presentation:CAA"),
    MethodEntry("byo", VectorSettings, "pytest_steer.methods.byo:VectorMethod", side_effects=True,
                shows="pytest_steer.methods.presentation:BYO"),
)


def _from_entry_point(ep: object) -> MethodEntry:
    """Load a third-party method's entry point and check it against the method contract (`base.Method`)."""
    from pytest_steer.methods.contract import has_parts, missing, replays, scores_control, shares_work

    name, value = ep.name, ep.value  # type: ignore[attr-defined]
    try:
        obj = ep.load()  # type: ignore[attr-defined]
    except Exception as exc:  # a broken third-party package must name itself
        raise RegistryError(f"entry point {ENTRY_POINT_GROUP}:{name} = {value!r} failed to load: {exc}") from exc
    lacking = missing(obj)
    if lacking:
        raise RegistryError(
            f"entry point {ENTRY_POINT_GROUP}:{name} = {value!r} is not a method: it lacks {', '.join(lacking)} "
            "(a method has `settings_type` (a dataclass), `prepare` and `run`; see docs/writing-a-method.md)"
        )
    return MethodEntry(name, obj.settings_type, value, shares_work=shares_work(obj), replays=replays(obj),
                       parts=has_parts(obj), side_effects=scores_control(obj))


class Registry(Mapping[str, MethodEntry]):
    """Methods by name: the built-ins, then entry points, each loaded (and checked) only when first looked up,
    so a run that uses none of them imports none of them (nor torch)."""

    def __init__(self, builtins: tuple[MethodEntry, ...], points: dict[str, object]) -> None:
        self._entries: dict[str, MethodEntry] = {entry.name: entry for entry in builtins}
        self._points = {name: ep for name, ep in points.items() if name not in self._entries}

    def __getitem__(self, name: str) -> MethodEntry:
        if name not in self._entries:
            self._entries[name] = _from_entry_point(self._points[name])  # KeyError for an unknown name
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        yield from [*(n for n in self._entries if n not in self._points), *self._points]

    def __len__(self) -> int:
        return len(set(self._entries) | set(self._points))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._points


@cache
def methods() -> Registry:
    """Every registered method by name (built-ins first; an entry point cannot replace one)."""
    return Registry(_BUILTINS, {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)})


@cache
def load_method(name: str) -> Method:
    """The method implementation registered under `name` (imports its module)."""
    return methods()[name].load()

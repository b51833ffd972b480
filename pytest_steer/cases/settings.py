"""Typed settings records built from TOML tables, with errors that name the field."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pytest_steer.errors import SteerError

T = TypeVar("T")


class SettingsError(SteerError):
    """A setting is unknown or has the wrong type; the message says where and what was expected."""


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SettingsError as exc:
                errors.append(str(exc))
                if arg is float and isinstance(value, float):  # a number that is not a usable one: say why
                    raise
        raise SettingsError(errors[0] if len(errors) == 1 else f"{where}: expected {_describe(annotation)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list of {_describe(args[0])}, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is typing.Literal:
        if value not in args:
            raise SettingsError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise SettingsError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _describe(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if args:
        return " or ".join(_describe(a) for a in args if a is not type(None))
    return getattr(annotation, "__name__", str(annotation))


def build_settings(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    """Instantiate dataclass `cls` from `data`; unknown keys and bad types raise SettingsError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise SettingsError(f"{where}: unknown setting '{unknown[0]}' (known: {', '.join(sorted(names))})")
    values = {key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()}
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def settings_dict(obj: Any) -> dict[str, Any]:
    """JSON-friendly dict of a settings dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}

"""The typed records of a case: its result (built once, never mutated) and how it is stored.

A baseline file is written from an explicit list of kept fields (`CaseResult.to_baseline`),
so a run-time field never leaks into it; `CaseResult.from_baseline` reads every baseline
layout this project has written.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pytest_steer.errors import SteerError

SCHEMA = 2  # baseline files without a schema field (written before typed records) have the same layout
MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are 32-bit
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 100  # a name is one path component (a slot is task-variant): well under the usual 255-byte limit
MAX_CASE_ID = 4 * MAX_NAME + 3  # <model>-<method>-<task>[-<variant>]


def name_rule(longest: int = MAX_NAME) -> str:
    """What a name may hold, for messages."""
    return f"letters, digits, '.', '_' and '-' (first a letter or digit, at most {longest} characters)"


NAME_RULE = name_rule()
_REQUIRED: Any = object()


def task_slot(task: str, variant: str) -> str:
    """The task part of a case id and of its baseline's file name: the task, plus the variant if any."""
    return f"{task}-{variant}" if variant else task


def case_id(model: str, method: str, slot: str) -> str:
    return f"{model}-{method}-{slot}"


def is_name(text: object, longest: int = MAX_NAME) -> bool:
    """A model, method, task or variant name: letters, digits, '.', '_' and '-', first a letter or digit, at most
    `longest` characters, matched in full (so no '/', '..', NUL or trailing newline: it is safe as one path
    component)."""
    return isinstance(text, str) and len(text) <= longest and _NAME.fullmatch(text) is not None


class RecordError(SteerError, ValueError):
    """A stored record is malformed; the message names the field by its path (`metrics.delta_ci`) and what was
    expected."""


def field_path(path: str, key: str | int) -> str:
    """`path.key`, or `path[key]` for a list index; a key that is not printable is shown quoted."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = key if key.isprintable() else repr(key)
    return f"{path}.{key}" if path else key


def check_name(value: str, path: str, empty: bool = False, longest: int = MAX_NAME) -> str:
    """`value` if it is a name (`is_name`), or empty where `empty` allows; RecordError naming the field otherwise."""
    if not is_name(value, longest) and not (empty and value == ""):
        raise RecordError(f"field '{path}': expected a name of {name_rule(longest)}, got {short_repr(value)}")
    return value


def short_repr(value: Any) -> str:
    """`repr(value)`, cut to 60 characters (one line: a message quotes data, not echoes it)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_NOUNS = {float: ("a finite number", "finite numbers"), int: ("an integer", "integers"),
          bool: ("true or false", "flags"), str: ("a string", "strings"), type(None): ("null", "nulls"),
          dict: ("an object", "objects")}


def _describe(hint: Any, plural: bool = False) -> str:
    """What a type hint asks for, in words: `tuple[float, ...]` -> 'a list of finite numbers'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        size = "" if args[-1] is Ellipsis else f"{len(args)} "
        return ("lists of " if plural else "a list of ") + size + _describe(args[0], plural=True)
    nouns = _NOUNS.get(origin or hint, ("an object", "objects"))
    return nouns[plural]


def _bad(path: str, hint: Any, value: Any) -> RecordError:
    return RecordError(f"field '{path}': expected {_describe(hint)}, got {short_repr(value)}")


def check_value(value: Any, hint: Any, path: str) -> Any:
    """`value` as the type `hint` says (float: finite; int: not a bool, 64-bit; tuple: from a JSON list; a
    dataclass: from an object, see `check_record`); RecordError naming the field `path` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and options[0] not in _NOUNS:  # a list or an object: its error names the inner field
            return check_value(value, options[0], path)
        for option in options:
            try:
                return check_value(value, option, path)
            except RecordError:
                continue
        raise _bad(path, hint, value)
    if origin is typing.Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            raise _bad(path, hint, value)
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise _bad(path, hint, value)
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(check_value(v, k, field_path(path, i)) for i, (v, k) in enumerate(zip(value, kinds)))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _bad(path, dict, value)
        kind = args[1] if args else Any
        return {k: v if kind is Any else check_value(v, kind, field_path(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return check_record(hint, value, path)
    if not _is_a(value, hint):
        raise _bad(path, hint, value)
    return float(value) if hint is float else value


def _is_a(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63
    return isinstance(value, hint)


def check_record(cls: type, data: Any, path: str, skip: tuple[str, ...] = ()) -> Any:
    """An instance of dataclass `cls` from a JSON object with its field names (other keys are ignored); every
    field checked against its annotation. Fields in `skip` are left at their defaults for the caller."""
    data = _object(data, path)
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name in data:
            values[f.name] = check_value(data[f.name], hints[f.name], field_path(path, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(f"no field '{field_path(path, f.name)}'")
    return cls(**values)


_hints = functools.cache(typing.get_type_hints)


def get(data: dict[str, Any], key: str, hint: Any, path: str, default: Any = _REQUIRED) -> Any:
    """One field of a JSON object, checked (`check_value`); `default` when absent, RecordError if required."""
    if key not in data:
        if default is _REQUIRED:
            raise RecordError(f"no field '{field_path(path, key)}'")
        return default
    return check_value(data[key], hint, field_path(path, key))


def _object(data: Any, path: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RecordError(f"field '{path or '(top level)'}': expected an object, got {short_repr(data)}")
    return data


def _outcomes(data: dict[str, Any], key: str, path: str, n: int, optional: bool = False) -> Any:
    """Per-item outcomes: `n` finite numbers in [0, 1], as stored (0/1 stay ints); None if optional and absent."""
    if optional and data.get(key) is None:
        return None
    where = field_path(path, key)
    values = get(data, key, tuple[float, ...], path)
    if len(values) != n:
        raise RecordError(f"field '{where}': expected {n} per-item outcomes (one per test item), got {len(values)}")
    for i, v in enumerate(values):
        if not 0 <= v <= 1:
            raise RecordError(f"field '{field_path(where, i)}': expected an outcome in [0, 1], got {v!r}")
    return tuple(data[key])


@dataclass(frozen=True)
class Comparison:
    """One metric on the test split: unsteered vs steered, with the paired interval of the difference."""

    unsteered: float
    steered: float
    delta: float
    delta_ci: tuple[float, float]
    ci_level: float
    n_test: int

    def to_json(self) -> dict[str, Any]:
        return {"unsteered": self.unsteered, "steered": self.steered, "delta": self.delta,
                "delta_ci": list(self.delta_ci), "ci_level": self.ci_level, "n_test": self.n_test}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "") -> Comparison:
        """RecordError naming the field if a number is missing, not finite, or the test split is empty."""
        comparison = check_record(cls, data, path)
        if comparison.n_test < 1:
            raise RecordError(f"field '{field_path(path, 'n_test')}': expected at least 1 test item, "
                              f"got {comparison.n_test}")
        return comparison


@dataclass(frozen=True)
class Metrics:
    """The gated metric with its interval, the 5-shot ICL score and the other metrics' comparisons."""

    gated: Comparison
    metric: str = "accuracy"
    icl: float | None = None  # the 5-shot (in-context) score on the same test items
    recovery: float | None = None  # steered / icl
    secondary: dict[str, Comparison] = field(default_factory=dict)

    @property
    def unsteered(self) -> float:
        return self.gated.unsteered

    @property
    def steered(self) -> float:
        return self.gated.steered

    @property
    def delta(self) -> float:
        return self.gated.delta

    @property
    def delta_ci(self) -> tuple[float, float]:
        return self.gated.delta_ci

    @property
    def n_test(self) -> int:
        return self.gated.n_test

    def to_json(self) -> dict[str, Any]:
        out = self.gated.to_json()
        if self.metric != "accuracy":
            out["metric"] = self.metric
        if self.icl is not None:
            out["icl"] = self.icl
            out["recovery"] = self.recovery
        if self.secondary:
            out["secondary"] = {name: c.to_json() for name, c in self.secondary.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "") -> Metrics:
        where = field_path(path, "secondary")
        secondary = get(_object(data, path), "secondary", dict, path, {})
        return cls(
            gated=Comparison.from_json(data, path), metric=get(data, "metric", str, path, "accuracy"),
            icl=get(data, "icl", float | None, path, None), recovery=get(data, "recovery", float | None, path, None),
            secondary={k: Comparison.from_json(v, field_path(where, k)) for k, v in secondary.items()},
        )


@dataclass(frozen=True)
class Outcomes:
    """Per test item: its text and the unsteered, steered and ICL outcomes (0/1 or graded)."""

    items: tuple[str, ...]
    unsteered: tuple[float, ...]
    steered: tuple[float, ...]
    icl: tuple[float, ...] | None = None
    secondary: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": list(self.items), "unsteered": list(self.unsteered),
                               "steered": list(self.steered), "icl": None if self.icl is None else list(self.icl)}
        for name, (unsteered, steered) in self.secondary.items():
            out[f"{name}_unsteered"], out[f"{name}_steered"] = list(unsteered), list(steered)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "per_item", n_test: int | None = None) -> Outcomes:
        """RecordError naming the field unless every list has one entry per test item (`n_test`, else as many
        as `items`) and every outcome is a finite number in [0, 1]."""
        items = get(_object(data, path), "items", tuple[str, ...], path)
        n = len(items) if n_test is None else n_test
        if len(items) != n:
            raise RecordError(f"field '{field_path(path, 'items')}': expected {n} test items (metrics.n_test), "
                              f"got {len(items)}")
        names = sorted({k[: -len("_unsteered")] for k in data if k.endswith("_unsteered")})
        return cls(
            items=items, unsteered=_outcomes(data, "unsteered", path, n), steered=_outcomes(data, "steered", path, n),
            icl=_outcomes(data, "icl", path, n, optional=True),
            secondary={m: (_outcomes(data, f"{m}_unsteered", path, n), _outcomes(data, f"{m}_steered", path, n))
                       for m in names},
        )


@dataclass(frozen=True)
class TaskData:
    """Which task data a result was computed on."""

    source: str
    sha256: str
    items: int


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: model, code, data and seed."""

    fingerprint: str
    model_source: dict[str, Any]
    adapter: dict[str, Any]
    versions: dict[str, str]
    task_data: TaskData
    seed: int
    counts: dict[str, int]
    settings: dict[str, Any]
    device: str = "cpu"  # the device type the numbers were computed on (cpu, cuda, mps)
    dtype: str = "float32"  # the weight dtype


@dataclass(frozen=True)
class Replay:
    """The accepted vector (from the baseline's safetensors) applied to this run's model at the accepted setting."""

    vector_sha256: str
    setting: dict[str, Any]  # the accepted chosen setting it was applied at
    accepted: float  # the accepted steered score
    score: float = 0.0  # the stored vector's score on this model (test split)
    steered: tuple[float, ...] = ()  # its per-item outcomes
    error: str = ""  # why it could not be applied (then score and steered mean nothing)

    def to_json(self) -> dict[str, Any]:
        return {"vector_sha256": self.vector_sha256, "setting": self.setting, "accepted": self.accepted,
                "score": self.score, "steered": list(self.steered), "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "replay", n_test: int | None = None) -> Replay:
        """RecordError naming the field if malformed; its outcomes are none (it could not be applied) or one per
        test item."""
        replay = check_record(cls, data, path, skip=("steered",))
        steered = get(data, "steered", tuple[float, ...], path, ())
        if not steered:
            return replay
        n = len(steered) if n_test is None else n_test
        return dataclasses.replace(replay, steered=_outcomes(data, "steered", path, n))


@dataclass(frozen=True)
class SideEffect:
    """The control task scored under the case's steering: per control item, 1 when the right answer is preferred."""

    task: str
    items: tuple[str, ...]
    unsteered: tuple[float, ...]
    steered: tuple[float, ...]

    @property
    def drop(self) -> float:
        """How much the control score fell under the steering (negative: it rose)."""
        return (sum(self.unsteered) - sum(self.steered)) / len(self.items)

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "items": list(self.items), "unsteered": list(self.unsteered),
                "steered": list(self.steered)}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "side_effect") -> SideEffect:
        """RecordError naming the field unless both outcome lists hold one number in [0, 1] per control item."""
        data = _object(data, path)
        items = get(data, "items", tuple[str, ...], path)
        if not items:
            raise RecordError(f"field '{field_path(path, 'items')}': expected at least one control item")
        return cls(task=_name(data, "task", path), items=items, unsteered=_outcomes(data, "unsteered", path, len(items)),
                   steered=_outcomes(data, "steered", path, len(items)))


@dataclass(frozen=True)
class CaseResult:
    """Everything one run of a case measured. Built once; judging never changes it."""

    id: str
    model: str
    method: str
    task: str
    variant: str
    metrics: Metrics
    chosen: dict[str, Any]
    curves: dict[str, list[Any]]
    outcomes: Outcomes
    provenance: Provenance
    diagnostics: dict[str, Any]
    timing_s: dict[str, float] = field(default_factory=dict)  # run only
    vector_file: str | None = None  # run only: the staged accepted vector (safetensors)
    computed_at: str | None = None  # run only: when the numbers were computed (UTC, ISO 8601)
    reused: bool = False  # run only: judged from the result stored under the same inputs
    replay: Replay | None = None  # run only: the accepted vector on this model (when the model changed)
    side_effect: SideEffect | None = None  # the control task under the chosen steering, where the method scores it

    def to_baseline(self) -> dict[str, Any]:
        """The stored reference: the kept fields only, in the baseline file layout."""
        p = self.provenance
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "id": self.id, "model": self.model, "method": self.method, "task": self.task,
            "metrics": self.metrics.to_json(), "chosen": self.chosen, "curves": self.curves,
            "counts": p.counts, "seed": p.seed,
            "task_data": {"source": p.task_data.source, "sha256": p.task_data.sha256, "items": p.task_data.items},
            "fingerprint": p.fingerprint, "model_source": p.model_source, "adapter": p.adapter,
            "settings": p.settings, "versions": p.versions, "device": p.device, "dtype": p.dtype,
            "per_item": self.outcomes.to_json(),
            "diagnostics": self.diagnostics,
        }
        if self.variant:
            out["variant"] = self.variant
        if self.side_effect is not None:
            out["side_effect"] = self.side_effect.to_json()
        return out

    def to_json(self) -> dict[str, Any]:
        """The baseline fields plus the run-only ones (for reports and the xdist channel)."""
        return {**self.to_baseline(), "timing_s": self.timing_s, "vector_file": self.vector_file,
                "computed_at": self.computed_at, "reused": self.reused,
                "replay": None if self.replay is None else self.replay.to_json()}

    @classmethod
    def from_baseline(cls, data: dict[str, Any], path: str = "") -> CaseResult:
        """Read a baseline (any layout written so far) or a `to_json` payload, every field checked; RecordError
        naming the field (by its path under `path`) if malformed."""
        data = _object(data, path)
        schema = data.get("schema", SCHEMA)
        if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA:
            raise RecordError(f"field '{field_path(path, 'schema')}': expected a layout version 1..{SCHEMA} (a newer "
                              f"pytest-steer writes a larger one), got {short_repr(schema)}")
        metrics = Metrics.from_json(get(data, "metrics", dict, path), field_path(path, "metrics"))
        outcomes = Outcomes.from_json(get(data, "per_item", dict, path), field_path(path, "per_item"), metrics.n_test)
        _agree(metrics, outcomes, path)
        replay, side_effect = data.get("replay"), data.get("side_effect")
        return cls(
            id=get(data, "id", str, path), model=_name(data, "model", path), method=_name(data, "method", path),
            task=_name(data, "task", path), variant=_name(data, "variant", path, ""), metrics=metrics,
            chosen=_chosen(get(data, "chosen", dict, path), field_path(path, "chosen")),
            curves=_curves(get(data, "curves", dict, path, {}), field_path(path, "curves")),
            outcomes=outcomes,
            provenance=_provenance(data, path), diagnostics=get(data, "diagnostics", dict, path, {}),
            timing_s=_as_stored(data, "timing_s", dict[str, float], path, {}),
            vector_file=get(data, "vector_file", str | None, path, None),
            computed_at=get(data, "computed_at", str | None, path, None),
            reused=get(data, "reused", bool, path, False),
            replay=None if replay is None else Replay.from_json(replay, field_path(path, "replay"), metrics.n_test),
            side_effect=None if side_effect is None else SideEffect.from_json(side_effect, field_path(path, "side_effect")),
        )


AGREE = 1e-6  # stored means and per-item outcomes are written from the same numbers (6 places at most)


def _agree(metrics: Metrics, outcomes: Outcomes, path: str) -> None:
    """The stored scores are what the stored per-item outcomes give, and the test items are distinct: an edited
    mean (a regression hidden by lowering the accepted score) or a duplicated item is a RecordError."""
    if len(set(outcomes.items)) != len(outcomes.items):
        twice = next(i for i in outcomes.items if outcomes.items.count(i) > 1)
        raise RecordError(f"field '{field_path(path, 'per_item.items')}': test item {short_repr(twice)} is listed twice")
    pairs: list[tuple[str, float | None, tuple[float, ...] | None]] = [
        ("metrics.unsteered", metrics.unsteered, outcomes.unsteered), ("metrics.steered", metrics.steered, outcomes.steered),
        ("metrics.icl", metrics.icl, outcomes.icl)]
    comparisons = [("metrics", metrics.gated)]
    for name, comparison in metrics.secondary.items():
        if name not in outcomes.secondary:
            raise RecordError(f"field '{field_path(path, 'per_item')}': no per-item outcomes for the secondary metric "
                              f"{short_repr(name)}")
        unsteered, steered = outcomes.secondary[name]
        pairs += [(f"metrics.secondary.{name}.unsteered", comparison.unsteered, unsteered),
                  (f"metrics.secondary.{name}.steered", comparison.steered, steered)]
        comparisons.append((f"metrics.secondary.{name}", comparison))
    for where, mean, values in pairs:
        if mean is not None and values is not None and abs(sum(values) / len(values) - mean) > AGREE:
            raise RecordError(f"field '{field_path(path, where)}': {mean} is not the mean of its per-item outcomes "
                              f"({sum(values) / len(values):.6f})")
    for where, c in comparisons:
        if abs(c.steered - c.unsteered - c.delta) > AGREE:
            raise RecordError(f"field '{field_path(path, where + '.delta')}': {c.delta} is not steered - unsteered "
                              f"({c.steered - c.unsteered:.6f})")
        if c.delta_ci[0] > c.delta_ci[1]:
            raise RecordError(f"field '{field_path(path, where + '.delta_ci')}': its lower end {c.delta_ci[0]} is above "
                              f"its upper end {c.delta_ci[1]}")


def _as_stored(data: dict[str, Any], key: str, hint: Any, path: str, default: Any) -> Any:
    """A field checked as `get` checks it, returned as stored (ints stay ints)."""
    get(data, key, hint, path, default)
    return dict(data[key]) if isinstance(data.get(key), dict) else data.get(key, default)


def _name(data: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
    """A model, method, task or variant name (`is_name`; the variant may be empty)."""
    value = get(data, key, str, path, _REQUIRED if default is None else default)
    return check_name(value, field_path(path, key), empty=default == "")


def _provenance(data: dict[str, Any], path: str) -> Provenance:
    seed = get(data, "seed", int, path)
    if not 0 <= seed <= MAX_SEED:
        raise RecordError(f"field '{field_path(path, 'seed')}': expected a seed in 0..{MAX_SEED}, got {seed}")
    task = check_record(TaskData, get(data, "task_data", dict, path), field_path(path, "task_data"))
    if task.items < 0:
        raise RecordError(f"field '{field_path(path, 'task_data.items')}': expected a count >= 0, got {task.items}")
    return Provenance(
        fingerprint=get(data, "fingerprint", str, path), model_source=get(data, "model_source", dict, path, {}),
        adapter=get(data, "adapter", dict, path, {}), versions=get(data, "versions", dict, path, {}),
        task_data=task, seed=seed, counts=get(data, "counts", dict[str, int], path, {}),
        settings=get(data, "settings", dict, path, {}),
        device=get(data, "device", str, path, "cpu"), dtype=get(data, "dtype", str, path, "float32"),  # baselines before 2026-11-25: CPU float32
    )


def _chosen(chosen: dict[str, Any], path: str) -> dict[str, Any]:
    """The chosen setting: per key a string, flag, finite number or null, or a list of them (as read, unconverted)."""
    for key, value in chosen.items():
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, str | bool) or _is_a(v, float) for v in values):
            raise RecordError(f"field '{field_path(path, key)}': expected a string, finite number, true/false or null, "
                              f"or a list of them, got {short_repr(value)}")
    return chosen


def _curves(curves: dict[str, Any], path: str) -> dict[str, list[Any]]:
    """Each curve a list of numbers, or of lists of numbers (a grid); NaN allowed (as read, unconverted)."""
    for key, value in curves.items():
        ok = isinstance(value, list) and all(_number(v) or isinstance(v, list) and all(map(_number, v)) for v in value)
        if not ok:
            raise RecordError(f"field '{field_path(path, key)}': expected a list of numbers or of lists of numbers, "
                              f"got {short_repr(value)}")
    return curves


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

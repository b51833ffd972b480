"""Case files: declarative TOML that expands models x methods x tasks into cases.

A case file (`steer_*.toml`) holds:

    [defaults]                 # case options for every case of the file
    [methods.<method>]         # method settings for every case of the file
    [models.<name>]            # custom model sources: path / hub (+revision) / gguf
    [tasks.<name>]             # custom task files: path (relative to the case file)
    [[suite]]                  # models, methods and tasks to expand; optional variant + settings
    [[case]]                   # overrides for the cases that match model/method/task/variant

A suite with `variant = "lower"` and `settings = {...}` runs its combinations again under
those method settings; the variant joins the case id (`model-method-task-lower`) and the
baseline name, so several settings of one method can be gated side by side.

Errors name the file, the case and the field; a broken case becomes an item that
fails with that message, so the other cases still run.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_steer.run.device import DEVICE_FORM, DEVICES, DTYPES
from pytest_steer.errors import SteerError
from pytest_steer.storage.files import read_parsed
from pytest_steer.methods import methods
from pytest_steer.methods.contract import ChecksTask
from pytest_steer.models.packaged import PACKAGED_MODELS
from pytest_steer.models.spec import AdapterError, ArchitectureOverride, ModelSpec
from pytest_steer.record import MAX_SEED, NAME_RULE, case_id, is_name, task_slot
from pytest_steer.cases.settings import SettingsError, build_settings
from pytest_steer.tasks import BUILTIN_DIR, Task, TaskError, load_task


class CaseFileError(SteerError):
    """A case file cannot be used; the message names the file and the field."""


MAX_ITEMS = 1_000_000  # an upper bound on n_dev and n_test far beyond any task file


@dataclass(frozen=True)
class CaseOptions:
    """Per-case gate and data options. None means: take the ini / command-line default."""

    threshold: float | None = None
    min_recovery: float | None = None
    tolerance: float | Literal["auto"] | None = None  # "auto": the smallest drop the split can detect
    gate: Literal["mean", "ci_low"] = "mean"
    n_dev: int = 40
    n_test: int = 80
    seed: int = 0
    expect: Literal["pass", "fail"] = "pass"
    reason: str = ""
    gate_vector: Literal["extracted", "replay"] = "extracted"  # replay: gate on the accepted vector applied anew
    profile: Literal["default", "large"] = "default"  # large: marked `large`, run only when -m names it
    control: str = "general-knowledge"  # the side-effect control task ("" for none), where the method scores one
    n_control: int = 80  # control questions scored
    max_side_effect: float | None = None  # fail when the control score falls more than this, significantly

    def validate(self, where: str) -> None:
        for name in ("n_dev", "n_test"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{where}.{name}: must be at least 1, got {getattr(self, name)}")
            if getattr(self, name) > MAX_ITEMS:
                raise SettingsError(f"{where}.{name}: must be at most {MAX_ITEMS}, got {getattr(self, name)}")
        if isinstance(self.tolerance, float) and not 0 <= self.tolerance < 1:
            # scores lie in [0, 1]: a tolerance of 1 or more lets every drop pass, a check that cannot fail
            raise SettingsError(f"{where}.tolerance: must be 'auto' or a number in [0, 1), got {self.tolerance}")
        if self.seed < 0:
            raise SettingsError(f"{where}.seed: must be >= 0, got {self.seed}")
        if self.n_control < 1:
            raise SettingsError(f"{where}.n_control: must be at least 1, got {self.n_control}")
        if self.max_side_effect is not None and not 0 <= self.max_side_effect < 1:
            raise SettingsError(f"{where}.max_side_effect: must be a number in [0, 1) (the largest allowed drop of the "
                                f"control score), got {self.max_side_effect}")
        if self.control and not is_name(self.control):
            raise SettingsError(f"{where}.control: expected a task name of {NAME_RULE} or \"\" (no control), "
                                f"got {self.control!r}")
        if self.seed > MAX_SEED:
            raise SettingsError(f"{where}.seed: must be at most {MAX_SEED} (a 32-bit seed), got {self.seed}")


@dataclass(frozen=True)
class Case:
    """One (model, method, task) combination with everything needed to run and judge it."""

    model: ModelSpec
    method: str
    task: str
    task_path: Path
    options: CaseOptions
    settings: Any
    source: Path
    variant: str = ""
    control_path: Path | None = None  # the side-effect control task's file (None: no control)

    @property
    def slot(self) -> str:
        """The task part of the id and of the baseline name: the task, plus the variant if any."""
        return task_slot(self.task, self.variant)

    @property
    def id(self) -> str:
        return case_id(self.model.name, self.method, self.slot)


@dataclass(frozen=True)
class BrokenCase:
    """A case (or a whole file) that could not be built; it fails with `message`."""

    id: str
    message: str
    source: Path
    model: str = ""
    method: str = ""
    task: str = ""


def marker_name(text: str) -> str:
    """A name usable in `-m` expressions: `qwen2.5-coder-0.5b` -> `qwen2_5_coder_0_5b`."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_").lower()
    return name if name and not name[0].isdigit() else f"m_{name}"


FAMILIES = ("smollm", "gemma", "qwen", "llama", "mistral", "phi", "olmo", "gpt2", "pythia", "falcon")


def model_family(name: str) -> str | None:
    low = name.lower()
    return next((f for f in FAMILIES if low.startswith(f)), None)


_TOP_KEYS = {"defaults", "methods", "models", "tasks", "suite", "case"}
_SELECTORS = ("model", "method", "task", "variant")


def _check_task_fits(settings: Any, task_path: Path, name: str, options: CaseOptions, where: str) -> None:
    """Read the task now (no model needed) so that a pool too small for the settings fails at collection."""
    if not isinstance(settings, ChecksTask):
        return
    try:
        settings.check_task(read_task(name, task_path), options.n_dev, options.n_test, where)
    except TaskError as exc:
        raise CaseFileError(f"{where}: {exc}") from exc


def read_task(name: str, path: Path) -> Task:
    """The task file, read once per version of it (keyed by its modification time)."""
    return _read_task(name, path, path.stat().st_mtime_ns if path.exists() else 0)


@functools.lru_cache(maxsize=64)
def _read_task(name: str, path: Path, _mtime_ns: int) -> Task:
    return load_task(name, path)


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise CaseFileError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _names(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise CaseFileError(f"{where}: expected a non-empty list of names")
    return value


def _model_spec(name: str, models: Mapping[str, Any], base: Path, where: str) -> ModelSpec:
    if name in models:
        entry = dict(_table(models[name], f"{where}: [models.{name}]"))
        adapter = entry.pop("adapter", None)
        revision = entry.pop("revision", None)
        opt_ins: dict[str, Any] = {k: entry.pop(k) for k in ("trust_remote_code", "allow_pickle") if k in entry}
        for key, value in opt_ins.items():
            if not isinstance(value, bool):
                raise CaseFileError(f"{where}: [models.{name}].{key}: expected true or false, got {value!r}")
        opt_ins.update(_placement(entry, f"{where}: [models.{name}]"))
        kinds = [k for k in ("path", "hub", "gguf", "packaged") if k in entry]
        unknown = sorted(set(entry) - {"path", "hub", "gguf", "packaged"})
        if unknown:
            raise CaseFileError(f"{where}: [models.{name}]: unknown field '{unknown[0]}' (expected path, hub, gguf, packaged, "
                                "revision, adapter, trust_remote_code, allow_pickle, device, dtype, device_map)")
        if len(kinds) != 1:
            raise CaseFileError(f"{where}: [models.{name}]: give exactly one of path, hub, gguf or packaged")
        kind = kinds[0]
        location = entry[kind]
        if not isinstance(location, str):
            raise CaseFileError(f"{where}: [models.{name}].{kind}: expected a string")
        if revision is not None and kind != "hub":
            raise CaseFileError(f"{where}: [models.{name}].revision: only a hub model has a revision")
        override = None
        if adapter is not None:
            try:
                override = ArchitectureOverride.from_mapping(_table(adapter, f"{where}: [models.{name}.adapter]"), f"{where}: [models.{name}.adapter]")
            except AdapterError as exc:
                raise CaseFileError(str(exc)) from exc
        if kind == "packaged":
            if location not in PACKAGED_MODELS:
                raise CaseFileError(f"{where}: [models.{name}].packaged: unknown alias {location!r} (known: {', '.join(PACKAGED_MODELS)})")
            return ModelSpec(name, "packaged", location, override=override, **opt_ins)
        if kind in ("path", "gguf"):
            location = str(_local_path(location, base, f"{where}: [models.{name}].{kind}"))
        return ModelSpec(name, "folder" if kind == "path" else kind, location, revision, override, **opt_ins)
    if name in PACKAGED_MODELS:
        return ModelSpec(name, "packaged", name)
    raise CaseFileError(
        f"{where}: unknown model {name!r}: expected a packaged alias ({', '.join(PACKAGED_MODELS)}) "
        f"or a [models.{name}] table with path, hub or gguf"
    )


def _placement(entry: dict[str, Any], where: str) -> dict[str, str]:
    """A model's own device, dtype and device_map (popped from `entry`), checked for form; whether the
    device exists is checked when the model loads."""
    out: dict[str, str] = {}
    for key, allowed in (("device", None), ("dtype", DTYPES), ("device_map", ("auto",))):
        if key not in entry:
            continue
        value = entry.pop(key)
        if not isinstance(value, str) or (allowed is not None and value not in allowed) or \
                (key == "device" and not DEVICE_FORM.fullmatch(value)):
            expected = ", ".join(allowed) if allowed is not None else ", ".join(DEVICES)
            raise CaseFileError(f"{where}.{key}: expected one of {expected}, got {value!r}")
        out[key] = value
    return out


def _task_path(name: str, tasks: Mapping[str, Any], base: Path, where: str) -> Path:
    if name in tasks:
        entry = _table(tasks[name], f"{where}: [tasks.{name}]")
        unknown = sorted(set(entry) - {"path"})
        if unknown or not isinstance(entry.get("path"), str):
            raise CaseFileError(f"{where}: [tasks.{name}]: expected exactly one field 'path' (a JSON file)")
        return _local_path(entry["path"], base, f"{where}: [tasks.{name}].path")
    for folder in (base / "tasks", BUILTIN_DIR):
        candidate = folder / f"{name}.json"
        if candidate.is_file():
            return candidate
    raise CaseFileError(f"{where}: unknown task {name!r}: no tasks/{name}.json next to the case file or built in, and no [tasks.{name}] table")


def _local_files(settings: Any, base: Path, where: str) -> Any:
    """Settings naming a file (`vector`): the path made absolute against the case file's folder, and the file
    checked to exist, so a wrong path fails at collection with the case file named."""
    text = getattr(settings, "vector", None)
    if not isinstance(text, str) or not text:
        return settings
    path = _local_path(text, base, f"{where}.vector")
    if not path.is_file():
        raise CaseFileError(f"{where}.vector: no file at {path}")
    return dataclasses.replace(settings, vector=str(path))


def _check_control(path: Path, options: CaseOptions, where: str) -> None:
    """The control task holds two-choice questions, at least `n_control` of them."""
    try:
        task = read_task(path.stem, path)
    except TaskError as exc:
        raise CaseFileError(f"{where}: {exc}") from exc
    if task.kind != "ab":
        raise CaseFileError(f"{where}: {path} holds {task.kind} items; a control task holds two-choice questions "
                            "({question, matching, other}, matching being the right answer)")
    if len(task.items) < options.n_control:
        raise CaseFileError(f"{where}: {path} has {len(task.items)} questions but n_control = {options.n_control}")


def _local_path(text: str, base: Path, where: str) -> Path:
    """A path from the case file, `~` expanded, relative to the case file's folder."""
    if not text or "\0" in text:
        raise CaseFileError(f"{where}: expected a file path, got {text!r}")
    try:
        path = Path(text).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: `~user` of no known user
        raise CaseFileError(f"{where}: cannot use path {text!r} ({exc})") from exc


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed case file as plain data; CaseFileError naming the file and the field if it is not."""
    return read_parsed(path, CaseFileError, "case file", tomllib.loads, "TOML")


def load_case_file(path: Path) -> list[Case | BrokenCase]:
    """Parse and expand one case file. Never raises for content errors: see BrokenCase."""
    path = Path(path)
    try:
        data = _read_toml(path)
    except CaseFileError as exc:
        return [BrokenCase(f"{path.stem}-invalid", str(exc), path)]
    try:
        return _expand(data, path)
    except (CaseFileError, SettingsError) as exc:
        return [BrokenCase(f"{path.stem}-invalid", str(exc), path)]


def _expand(data: Mapping[str, Any], path: Path) -> list[Case | BrokenCase]:
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise CaseFileError(f"{path}: unknown top-level key '{unknown[0]}' (expected {', '.join(sorted(_TOP_KEYS))})")
    base = path.parent
    defaults = dict(_table(data.get("defaults", {}), f"{path}: [defaults]"))
    try:  # a bad default fails every case of the file, each under its own id
        build_settings(CaseOptions, defaults, f"{path}: [defaults]")
        defaults_error = ""
    except SettingsError as exc:
        defaults_error = str(exc)
    method_defaults = _table(data.get("methods", {}), f"{path}: [methods]")
    for name in method_defaults:
        if name not in methods():
            raise CaseFileError(f"{path}: [methods.{name}]: unknown method (known: {', '.join(methods())})")
    models = _table(data.get("models", {}), f"{path}: [models]")
    tasks = _table(data.get("tasks", {}), f"{path}: [tasks]")
    suites = data.get("suite", [])
    overrides = data.get("case", [])
    if not isinstance(suites, list) or not isinstance(overrides, list):
        raise CaseFileError(f"{path}: 'suite' and 'case' must be arrays of tables ([[suite]], [[case]])")
    if not suites:
        raise CaseFileError(f"{path}: no [[suite]] table: nothing to run")

    combos, cases = _combos(suites, path)

    for j, override in enumerate(overrides):
        where = f"{path}: case[{j}]"
        override = _table(override, where)
        if not any(k in override for k in _SELECTORS):
            raise CaseFileError(f"{where}: give at least one of model, method, task, variant to say which cases it changes")
        if not any(_matches(override, c) for c in combos):
            raise CaseFileError(f"{where}: matches no case of this file ({_selector(override)})")

    seen: dict[str, Combo] = {}
    for combo in combos:
        cid = case_id(combo.model, combo.method, task_slot(combo.task, combo.variant))
        if cid in seen:  # overlapping suites expand a case once, unless they disagree on what it is
            other = seen[cid]
            if (other.task, other.variant) != (combo.task, combo.variant):
                raise CaseFileError(
                    f"{combo.where}: case id {cid} (task {combo.task!r}, variant {combo.variant!r}) is also the id of "
                    f"task {other.task!r}, variant {other.variant!r} from {other.where}; rename the task or the variant"
                )
            if other.settings != combo.settings:
                raise CaseFileError(
                    f"{combo.where}: case {cid} is also defined by {seen[cid].where} with other settings; "
                    "give one of the suites a different variant"
                )
            continue
        seen[cid] = combo
        if defaults_error:
            cases.append(BrokenCase(cid, defaults_error, path, combo.model, combo.method, combo.task))
        else:
            cases.append(_build_case(combo, cid, path, base, defaults, method_defaults, models, tasks, overrides))
    return cases


def _combos(suites: list[Any], path: Path) -> tuple[list[Combo], list[Case | BrokenCase]]:
    """Every (model, method, task, variant) that the [[suite]] tables expand to; a broken suite
    becomes one failing item of its own and the other suites still expand."""
    combos: list[Combo] = []
    broken: list[Case | BrokenCase] = []
    for i, suite in enumerate(suites):
        where = f"{path}: suite[{i}]"
        try:
            combos.extend(_suite_combos(suite, where))
        except CaseFileError as exc:
            broken.append(BrokenCase(f"{path.stem}-suite{i}-invalid", str(exc), path))
    return combos, broken


def _suite_combos(suite: Any, where: str) -> list[Combo]:
    suite = _table(suite, where)
    extra = sorted(set(suite) - {"models", "methods", "tasks", "variant", "settings"})
    if extra:
        raise CaseFileError(f"{where}: unknown field '{extra[0]}' (expected models, methods, tasks, variant, settings)")
    for key in ("models", "methods", "tasks"):
        if key not in suite:
            raise CaseFileError(f"{where}: missing field '{key}'")
    variant = suite.get("variant", "")
    if not isinstance(variant, str) or (variant and not is_name(variant)):
        raise CaseFileError(f"{where}.variant: expected a name of {NAME_RULE}, got {variant!r}")
    settings = _table(suite.get("settings", {}), f"{where}.settings")
    if settings and not variant:
        raise CaseFileError(f"{where}.settings: a suite with its own settings needs a 'variant' name to tell its cases apart")
    return [Combo(model, method, task, variant, settings, where)
            for model in _names(suite["models"], f"{where}.models")
            for method in _names(suite["methods"], f"{where}.methods")
            for task in _names(suite["tasks"], f"{where}.tasks")]



@dataclass(frozen=True)
class Combo:
    """One expanded (model, method, task, variant) of a [[suite]] table."""

    model: str
    method: str
    task: str
    variant: str
    settings: Mapping[str, Any]
    where: str


def _matches(override: Mapping[str, Any], combo: Combo) -> bool:
    return all(override.get(k, getattr(combo, k)) == getattr(combo, k) for k in _SELECTORS)


def _selector(override: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={override[k]!r}" for k in _SELECTORS if k in override)


def _build_case(
    combo: Combo, cid: str, path: Path, base: Path, defaults: Mapping[str, Any], method_defaults: Mapping[str, Any],
    models: Mapping[str, Any], tasks: Mapping[str, Any], overrides: list[Any],
) -> Case | BrokenCase:
    model, method, task = combo.model, combo.method, combo.task
    here = f"{combo.where} case {cid}"
    try:
        for label, name in (("model", model), ("task", task)):
            if not is_name(name):
                raise CaseFileError(f"{here}: {label} name {name!r} may hold only {NAME_RULE}")
        if method not in methods():
            raise CaseFileError(f"{here}: unknown method {method!r} (known: {', '.join(methods())})")
        spec = _model_spec(model, models, base, here)
        task_path = _task_path(task, tasks, base, here)
        options = dict(defaults)
        settings = dict(_table(method_defaults.get(method, {}), f"{path}: [methods.{method}]"))
        settings.update(combo.settings)
        option_where = f"{path}: [defaults]"
        for j, override in enumerate(overrides):
            if _matches(override, combo):
                for key, value in override.items():
                    if key in _SELECTORS:
                        continue
                    if key == "settings":
                        settings.update(_table(value, f"{path}: case[{j}].settings"))
                    else:
                        options[key] = value
                option_where = f"{path}: case[{j}] (for {cid})"
        case_options = build_settings(CaseOptions, options, option_where)
        if case_options.gate_vector == "replay" and not methods()[method].replays:
            raise CaseFileError(f"{option_where}.gate_vector: 'replay' needs a method that stores a vector "
                                f"(task_vector, function_vector); {method} stores none")
        method_settings = build_settings(methods()[method].settings_type, settings, f"{path}: settings of {cid}")
        method_settings = _local_files(method_settings, base, f"{path}: settings of {cid}")
        _check_task_fits(method_settings, task_path, task, case_options, f"{path}: case {cid}")
        control = None
        if case_options.control and methods()[method].side_effects:
            control = _task_path(case_options.control, tasks, base, f"{option_where}.control")
            _check_control(control, case_options, f"{option_where}.control")
        return Case(spec, method, task, task_path, case_options, method_settings, path, combo.variant, control)
    except (CaseFileError, SettingsError) as exc:
        return BrokenCase(cid, str(exc), path, model, method, task)

"""pytest hooks: options, collection of case files, markers, xdist plumbing and the summary.

Every hook is thin: the work is done by `cases`, `session`, `store` and `report`.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_steer.cases import FAMILIES, BrokenCase, Case, load_case_file, marker_name, model_family
from pytest_steer.methods import METHODS
from pytest_steer.progress import ProgressBars
from pytest_steer.report import counts, render_table, write_json_report
from pytest_steer.session import (
    BaselineMissing, SteerFailure, SteerOptions, SteerRegression, SteerSession, public_record, write_baseline,
)
from pytest_steer.store import BaselineStore

SESSION_KEY = pytest.StashKey[SteerSession]()
STATE_KEY = pytest.StashKey[dict[str, Any]]()
CASE_GLOB = "steer_*.toml"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("steer", "pytest-steer: steering regression suite")
    options = [
        ("update", "store_true", "write or refresh the baselines of the cases that ran (controller only, atomic)"),
        ("cache-dir", "store", "directory for fetched models, converted weights and cached vectors"),
        ("baseline-dir", "store", "directory of baselines (default: <rootdir>/baselines)"),
        ("report", "store", "write the run's results as JSON to this path"),
        ("threshold", "store", "minimum improvement steered - unsteered for a case to pass (default 0.1)"),
        ("tolerance", "store", "allowed drop of steered accuracy below the stored baseline (default 0.05)"),
        ("min-recovery", "store", "optional minimum of steered / ICL accuracy"),
    ]
    for name, action, help_text in options:
        key = "steer_" + name.replace("-", "_")
        kwargs: dict[str, Any] = {"action": action, "dest": key, "help": help_text}
        if action == "store":
            kwargs["default"] = None
        group.addoption(f"--steer-{name}", **kwargs)
        if name != "update":
            parser.addini(key, help_text + " (ini)", default="")


def _float_option(config: pytest.Config, key: str, default: float | None) -> float | None:
    raw = config.getoption(key)
    origin = f"--{key.replace('_', '-')}"
    if raw is None:
        raw, origin = config.getini(key), f"ini key {key}"
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise pytest.UsageError(f"{origin}: expected a number, got {raw!r}") from None


def _path_option(config: pytest.Config, key: str, default: Path) -> Path:
    raw = config.getoption(key)
    if raw:
        return Path(raw).expanduser().resolve()
    raw = config.getini(key)
    if raw:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else (config.rootpath / path).resolve()
    return default


def resolve_options(config: pytest.Config) -> SteerOptions:
    default_cache = Path(os.environ.get("PYTEST_STEER_CACHE_DIR", Path.home() / ".cache" / "pytest-steer"))
    report = config.getoption("steer_report") or config.getini("steer_report") or None
    return SteerOptions(
        cache_dir=_path_option(config, "steer_cache_dir", default_cache.expanduser().resolve()),
        baseline_dir=_path_option(config, "steer_baseline_dir", config.rootpath / "baselines"),
        update=bool(config.getoption("steer_update")),
        threshold=_float_option(config, "steer_threshold", 0.1),  # type: ignore[arg-type]
        tolerance=_float_option(config, "steer_tolerance", 0.05),  # type: ignore[arg-type]
        min_recovery=_float_option(config, "steer_min_recovery", None),
        report_path=Path(report).expanduser().resolve() if report else None,
    )


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _uses_xdist(config: pytest.Config) -> bool:
    return _is_worker(config) or bool(getattr(config.option, "numprocesses", None))


def _share_cores_between_workers() -> None:
    """Give each xdist worker its share of the cores: N workers x all-core torch threads thrash."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "steer: a pytest-steer case (model x method x task)")
    for method in METHODS:
        config.addinivalue_line("markers", f"{method}: pytest-steer cases of the {method} method")
    for family in FAMILIES:
        config.addinivalue_line("markers", f"{family}: pytest-steer cases on a {family} model")
    if _is_worker(config):
        _share_cores_between_workers()
    options = resolve_options(config)
    capman = config.pluginmanager.getplugin("capturemanager")
    show_bars = not _uses_xdist(config) and config.getoption("verbose") >= 0 and sys.stderr.isatty()
    config.stash[SESSION_KEY] = SteerSession(options, ProgressBars(capman) if show_bars else None)
    config.stash[STATE_KEY] = {"records": [], "selected": set(), "written": [], "collected_any": False}
    if not _is_worker(config):
        config.pluginmanager.register(_ResultSink(config), "steer-result-sink")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(_XdistController(config), "steer-xdist-controller")


def _register_marker(config: pytest.Config, name: str, what: str) -> None:
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    if name not in known:
        config.addinivalue_line("markers", f"{name}: pytest-steer cases of {what}")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.match(CASE_GLOB):
        return CaseFile.from_parent(parent, path=file_path)
    return None


class CaseFile(pytest.File):
    """A `steer_*.toml` file: one item per expanded case (broken ones included)."""

    def collect(self):  # type: ignore[no-untyped-def]
        config = self.config
        for case in load_case_file(self.path):
            if isinstance(case, BrokenCase):
                yield BrokenCaseItem.from_parent(self, name=case.id, broken=case)
                continue
            item = CaseItem.from_parent(self, name=case.id, case=case)
            for name, what in (
                (marker_name(case.method), f"the {case.method} method"),
                (marker_name(case.model.name), f"model {case.model.name}"),
                (marker_name(case.task), f"task {case.task}"),
                *([(marker_name(case.variant), f"variant {case.variant}")] if case.variant else []),
            ):
                _register_marker(config, name, what)
                item.add_marker(name)
            family = model_family(case.model.name)
            if family:
                _register_marker(config, family, f"{family} models")
                item.add_marker(family)
            item.add_marker("steer")
            item.add_marker(pytest.mark.xdist_group(name=case.model.name))
            if case.options.expect == "fail":
                reason = case.options.reason or "declared expected-to-fail in the case file"
                item.add_marker(pytest.mark.xfail(reason=reason, raises=SteerFailure, strict=False))
            yield item


class CaseItem(pytest.Item):
    """Runs one case and asserts its verdict."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.steer_record: dict[str, Any] | None = None

    def runtest(self) -> None:
        session = self.config.stash[SESSION_KEY]
        record = copy.deepcopy(session.result(self.case))
        record["diagnostics"]["worker"] = os.environ.get("PYTEST_XDIST_WORKER", "main")
        record["diagnostics"]["model_loads_in_process"] = session.load_counts.get(self.case.model.name, 0)
        self.steer_record = record
        metrics = record["metrics"]
        for key in ("unsteered", "steered", "icl", "delta", "recovery"):
            if metrics.get(key) is not None:
                self.user_properties.append((f"steer_{key}", round(metrics[key], 4)))
        self.user_properties.append(("steer_delta_ci", json.dumps([round(x, 4) for x in metrics["delta_ci"]])))
        self.user_properties.append(("steer_chosen", json.dumps(record["chosen"])))
        self.user_properties.append(("steer_fingerprint", record["fingerprint"]))
        verdict = session.verdict(self.case, record, self.nodeid)
        if not verdict.passed:
            message = f"{self.case.id}: " + "; ".join(verdict.reasons)
            if verdict.baseline == "regressed" and self.case.options.expect == "fail":
                # the declared expectation covers missing the gate, not dropping below the baseline
                raise SteerRegression(message)
            raise SteerFailure(message)

    def repr_failure(self, excinfo, style=None):  # type: ignore[no-untyped-def,override]
        if isinstance(excinfo.value, (SteerFailure, SteerRegression, BaselineMissing)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"steer case {self.case.id}"


class BrokenCaseItem(pytest.Item):
    """A case (or case file) that could not be built: it fails with the message that says why."""

    def __init__(self, *, broken: BrokenCase, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.broken = broken
        self.add_marker("steer")

    def runtest(self) -> None:
        raise CaseError(self.broken.message)

    def repr_failure(self, excinfo, style=None):  # type: ignore[no-untyped-def,override]
        return str(excinfo.value)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"broken steer case {self.broken.id}"


class CaseError(Exception):
    """Raised by a broken case item."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not isinstance(item, (CaseItem, BrokenCaseItem)):
        return
    if isinstance(item, CaseItem) and item.steer_record is not None:
        record = dict(item.steer_record)
    else:
        case = item.case if isinstance(item, CaseItem) else item.broken
        model = case.model.name if isinstance(case, Case) else case.model
        record = {"id": case.id, "model": model, "method": case.method, "task": case.task}
    error = call.excinfo is not None and not isinstance(call.excinfo.value, (SteerFailure, SteerRegression))
    if error:
        record["message"] = str(call.excinfo.value)
    record["_error"] = error
    report.steer_record = json.dumps(record)  # survives xdist serialisation


@pytest.fixture
def steer_case(request: pytest.FixtureRequest) -> Callable[..., dict[str, Any]]:
    """Run (or reuse, within this process) one case and return its result record.

        def test_qwen_keeps_its_layer(steer_case):
            result = steer_case("steering_cases/steer_task_vectors.toml", "qwen2.5-coder-0.5b-task_vector-present-past")
            assert result["chosen"]["layer"] in range(12, 20)

    The path is relative to the rootdir. The record holds metrics (with the paired
    bootstrap interval), the dev curve, chosen settings, per-item outcomes and diagnostics.
    """
    session = request.config.stash[SESSION_KEY]

    def run(case_file: str | Path, case_id: str) -> dict[str, Any]:
        path = Path(case_file)
        path = path if path.is_absolute() else request.config.rootpath / path
        cases = {c.id: c for c in load_case_file(path)}
        if case_id not in cases:
            raise LookupError(f"{path}: no case {case_id!r} (cases: {', '.join(sorted(cases))})")
        case = cases[case_id]
        if isinstance(case, BrokenCase):
            raise CaseError(case.message)
        return public_record(copy.deepcopy(session.result(case)))

    return run


class _ResultSink:
    """Collects case records from reports: on the controller, or in a serial run."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        raw = getattr(report, "steer_record", None)
        if raw is None or report.when != "call":
            return
        record = json.loads(raw)
        if record.pop("_error", False):
            status = "error"
        elif hasattr(report, "wasxfail"):
            status = "xpass" if report.passed else "xfail"
        else:
            status = "pass" if report.passed else "fail"
        record["status"] = status
        self.config.stash[STATE_KEY]["records"].append(record)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the cases of one model together (same order on every xdist worker)."""
    slots = [i for i, item in enumerate(items) if isinstance(item, CaseItem)]
    ordered = sorted((items[i] for i in slots), key=lambda it: it.case.model.name)  # type: ignore[attr-defined]
    for slot, item in zip(slots, ordered):
        items[slot] = item


def pytest_collection_finish(session: pytest.Session) -> None:
    state = session.config.stash[STATE_KEY]
    for item in session.items:
        if isinstance(item, (CaseItem, BrokenCaseItem)):
            state["selected"].add(item.name)
            state["collected_any"] = True


class _XdistController:
    """On the xdist controller: learn which cases the workers selected (for unused baselines)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        state = self.config.stash[STATE_KEY]
        for nodeid in ids:
            path, _, name = nodeid.rpartition("::")
            name = name.split("@", 1)[0]  # --dist loadgroup appends "@<group>"
            if path.endswith(".toml"):
                state["selected"].add(name)
                state["collected_any"] = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_worker(config):
        return
    state = config.stash[STATE_KEY]
    steer = config.stash[SESSION_KEY]
    records = sorted(state["records"], key=lambda r: r["id"])
    if steer.options.update:
        store = steer.baselines
        for record in records:
            if record["status"] != "error" and "_vectors" in record:
                state["written"].extend(write_baseline(store, record))
    if steer.options.report_path and records:
        write_json_report(
            steer.options.report_path,
            [public_record(r) for r in records],
            {"unused_baselines": _unused_baselines(config)},
        )


def _unused_baselines(config: pytest.Config) -> list[str]:
    state = config.stash[STATE_KEY]
    if not state["collected_any"]:
        return []
    store = BaselineStore(config.stash[SESSION_KEY].options.baseline_dir)
    from pytest_steer.cases import case_id

    unused = []
    for model, method, task in sorted(store.all_ids()):
        if case_id(model, method, task) not in state["selected"]:
            unused.append(str(store.json_path(model, method, task)))
    return unused


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _is_worker(config):
        return
    state = config.stash[STATE_KEY]
    records = sorted(state["records"], key=lambda r: r["id"])
    if not records and not state["collected_any"]:
        return
    tr = terminalreporter
    tr.section("pytest-steer")
    if records:
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts(records).items()))
        if config.getoption("verbose") >= 0:
            tr.write(render_table(records, tr._tw.fullwidth, tr.hasmarkup))
        tr.write_line(f"{len(records)} steering cases: {summary}")
    for path in state["written"]:
        tr.write_line(f"baseline written: {path}")
    unused = _unused_baselines(config)
    if unused and config.getoption("verbose") >= 0:
        tr.write_line(f"{len(unused)} baseline(s) not used by any selected case:")
        for path in unused:
            tr.write_line(f"  {path}")
    steer = config.stash[SESSION_KEY]
    if steer.options.report_path and records:
        tr.write_line(f"report written: {steer.options.report_path}")

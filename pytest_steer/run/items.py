"""The pytest items: a case file, the item that runs and asserts one case, the item of a broken case, and the
case report each item leaves on its pytest report (no torch)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_steer.cases.casefile import BrokenCase, Case, load_case_file, marker_name, model_family
from pytest_steer.errors import SteerError
from pytest_steer.judge.verdict import BaselineMissing, Verdict
from pytest_steer.methods import methods
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport
from pytest_steer.run import run_of


class SteerFailure(AssertionError):
    """The case ran and did not meet its gate."""


class SteerRegression(AssertionError):
    """The case fell below its stored baseline: a failure even where failing the gate is expected."""


class CaseError(SteerError):
    """Raised by a broken case item."""


def _register_marker(config: pytest.Config, name: str, what: str) -> None:
    known = {line.split(":")[0].split("(")[0].strip() for line in config.getini("markers")}
    if name not in known:
        config.addinivalue_line("markers", f"{name}: pytest-steer cases of {what}")




class CaseFile(pytest.File):
    """A `steer_*.toml` file: one item per expanded case (broken ones included)."""

    def collect(self):  # type: ignore[no-untyped-def]
        first = run_of(self.config).case_files
        candidates = run_of(self.config).options.candidates
        for case in load_case_file(self.path):
            if isinstance(case, Case) and case.model.name in candidates:  # same id, same baselines, another source
                case = replace(case, model=candidates[case.model.name].apply(case.model))
            if isinstance(case, Case) and first.setdefault(case.id, self.path) != self.path:
                # one id is one baseline: a second definition must not share (and overwrite) it
                message = (f"{self.path}: case {case.id} is already defined in {first[case.id]}; "
                           "case ids must be unique across case files (rename a model, task or variant)")
                case = BrokenCase(case.id, message, self.path, case.model.name, case.method, case.task)
            if isinstance(case, BrokenCase):
                run_of(self.config).broken.append(case)
                yield BrokenCaseItem.from_parent(self, name=case.id, broken=case)
            else:
                yield _case_item(self, case)


def _case_item(parent: CaseFile, case: Case) -> CaseItem:
    item = CaseItem.from_parent(parent, name=case.id, case=case)
    markers = [
        (marker_name(case.method), f"the {case.method} method"),
        (marker_name(case.model.name), f"model {case.model.name}"),
        (marker_name(case.task), f"task {case.task}"),
    ]
    if case.variant:
        markers.append((marker_name(case.variant), f"variant {case.variant}"))
    family = model_family(case.model.name)
    if family:
        markers.append((family, f"{family} models"))
    for name, what in markers:
        _register_marker(parent.config, name, what)
        item.add_marker(name)
    item.add_marker("steer")
    if case.options.profile != "default":
        item.add_marker(case.options.profile)
    if run_of(parent.config).options.group == "model":
        item.add_marker(pytest.mark.xdist_group(name=case.model.name))
    elif methods()[case.method].shares_work and not methods()[case.method].parts:
        # its variants run in one pass: keep them on one worker (a method scoring in parts shares the pass instead)
        item.add_marker(pytest.mark.xdist_group(name=f"{case.model.name}-{case.method}-{case.task}"))
    if case.options.expect == "fail":
        reason = case.options.reason or "declared expected-to-fail in the case file"
        item.add_marker(pytest.mark.xfail(reason=reason, raises=SteerFailure, strict=False))
    return item


class CaseItem(pytest.Item):
    """Runs one case and asserts its verdict."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.steer_result: CaseResult | None = None
        self.steer_verdict: Verdict | None = None

    def runtest(self) -> None:
        run = run_of(self.config)
        session = run.session
        result = run.result(self.case)
        self.steer_result = result
        m = result.metrics
        for key, value in (("unsteered", m.unsteered), ("steered", m.steered), ("icl", m.icl), ("delta", m.delta),
                           ("recovery", m.recovery)):
            if value is not None:
                self.user_properties.append((f"steer_{key}", round(value, 4)))
        self.user_properties.append(("steer_delta_ci", json.dumps([round(x, 4) for x in m.delta_ci])))
        self.user_properties.append(("steer_chosen", json.dumps(result.chosen)))
        self.user_properties.append(("steer_fingerprint", result.provenance.fingerprint))
        self.user_properties.append(("steer_reused", str(result.reused).lower()))
        self.user_properties.append(("steer_computed_at", result.computed_at or ""))
        verdict = session.verdict(self.case, result, self.nodeid)
        self.steer_verdict = verdict
        if not verdict.passed:
            message = f"{self.case.id}: " + "; ".join(verdict.reasons)
            if verdict.baseline in ("regressed", "mismatch") and self.case.options.expect == "fail":
                # the declared expectation covers missing the gate, not dropping below the baseline
                # or a baseline that no longer describes this model and data
                raise SteerRegression(message)
            raise SteerFailure(message)

    def repr_failure(self, excinfo, style=None):  # type: ignore[no-untyped-def,override]
        if isinstance(excinfo.value, (SteerFailure, SteerRegression, BaselineMissing)):
            return str(excinfo.value)
        if isinstance(excinfo.value, SteerError):
            # the message names the file and the field: a traceback would only bury it
            return f"{self.case.id}: {type(excinfo.value).__name__}: {excinfo.value}"
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


def _status(report: pytest.TestReport, error: bool, missing: bool = False) -> str:
    if missing:
        return "missing"  # the numbers were computed; there is nothing stored to judge them against
    if error:
        return "error"
    if hasattr(report, "wasxfail"):
        return "xpass" if report.passed else "xfail"
    return "pass" if report.passed else "fail"


def case_report(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> CaseReport | None:
    """What a case item's call phase leaves for the report (None for other items and phases)."""
    if call.when != "call" or not isinstance(item, (CaseItem, BrokenCaseItem)):
        return None
    error = call.excinfo is not None and not isinstance(call.excinfo.value, (SteerFailure, SteerRegression))
    message = str(call.excinfo.value) if error and call.excinfo is not None else ""
    run = run_of(item.config)
    if isinstance(item, BrokenCaseItem):
        b = item.broken
        return CaseReport(b.id, b.model, b.method, b.task, "", "error", message=message, worker=run.worker_id)
    c = item.case
    fresh = item.steer_result is not None and not item.steer_result.reused
    loads, device = run.where(c, fresh)
    missing = call.excinfo is not None and isinstance(call.excinfo.value, BaselineMissing)
    return CaseReport(c.id, c.model.name, c.method, c.task, c.variant, _status(report, error, missing),
                      item.steer_result, item.steer_verdict, message, run.worker_id, loads, device)

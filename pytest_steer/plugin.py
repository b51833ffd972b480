"""pytest hooks: options, collection of case files, markers, xdist plumbing and the summary.

Every hook is one call into `SteerRun` (this process's state) or a small item class.
Nothing here imports torch: the session that runs cases is created on first use.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import replace
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from xdist import get_xdist_worker_id, is_xdist_worker

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.cases.casefile import FAMILIES, BrokenCase, Case, case_id, load_case_file, marker_name, model_family, task_slot
from pytest_steer.errors import SteerError
from pytest_steer.storage.files import StoreError, check_output, hold_run, shared_dir
from pytest_steer.methods import methods
from pytest_steer.run.options import SteerOptions, add_options, resolve_options
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport, write_json_report
from pytest_steer.judge.verdict import BaselineMissing, Verdict

if TYPE_CHECKING:
    from pytest_steer.run.session import SteerSession

CASE_GLOB = "steer_*.toml"


class SteerFailure(AssertionError):
    """The case ran and did not meet its gate."""


class SteerRegression(AssertionError):
    """The case fell below its stored baseline: a failure even where failing the gate is expected."""


class CaseError(SteerError):
    """Raised by a broken case item."""


class SteerRun:
    """This process's pytest-steer state: options, the lazily created session, and what was reported."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.options: SteerOptions = resolve_options(config)
        self.baselines = BaselineStore(self.options.baseline_dir)
        self.reports: list[CaseReport] = []
        self.selected: set[str] = set()
        self.held: set[str] = set()  # ids of cases held back by their profile (their baselines are not stale)
        self.selected_cases: list[Case] = []  # the runnable cases selected in this process
        self.written: list[Path] = []
        self.collected_any = False
        self.crashed_workers = 0
        self.write_errors: list[str] = []
        self.case_files: dict[str, Path] = {}  # case id -> the case file that defined it first
        self.worker = False  # an xdist worker (set when the pytest session starts)
        self.worker_id = "master"
        self._session: SteerSession | None = None
        self._changes: list[Any] | None = None
        self.saved: dict[str, CaseReport] = {}
        self.durations: dict[str, float] = {}  # case id -> seconds its run took (controller)
        self.broken: list[BrokenCase] = []  # cases collected in this process that cannot run
        self.correction: Any = None  # the run's multiple-comparison correction (controller, at the end)
        # one id for the whole run, controller and workers alike: the scope of scores shared between cases
        self.run_id: str = getattr(config, "workerinput", {}).get("steer_run_id") or uuid.uuid4().hex[:16]
        self.expected: set[str] = set()  # every case id selected in the run (controller), to name what never reported
        self.skipped: set[str] = set()
        self._run_lock: Any = None  # held while the run lives: its shared folder is not a dead run's
        if not hasattr(config, "workerinput"):  # say now, not after an hour, that an output cannot be written
            for what, path in (("--steer-report", self.options.report_path), ("--steer-html", self.options.html_path)):
                try:
                    if path is not None:
                        check_output(path, what)
                except StoreError as exc:
                    raise pytest.UsageError(str(exc)) from None
        if self.options.html_path and not hasattr(config, "workerinput"):
            from pytest_steer.report.html import HtmlUnavailable, require

            try:
                require()
            except HtmlUnavailable as exc:
                raise pytest.UsageError(f"--steer-html: {exc}") from None
        if self.options.device not in ("auto", "cpu"):  # a GPU asked for where there is none: say so before anything runs
            from pytest_steer.run.device import DeviceError, check_available

            try:
                check_available(self.options.device)
            except DeviceError as exc:
                raise pytest.UsageError(str(exc)) from None
        if self.options.compare_path:  # read now: a bad file is a usage error before anything runs
            from pytest_steer.judge.compare import CompareError, load_saved

            try:
                self.saved = load_saved(self.options.compare_path)
            except CompareError as exc:
                raise pytest.UsageError(str(exc)) from None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.worker = is_xdist_worker(session)
        self.worker_id = get_xdist_worker_id(session)
        if not self.worker:
            self._run_lock = hold_run(self.options.cache_dir, self.run_id)
        if not self.worker and self.options.report_path and not self.config.option.collectonly:
            # until the run ends, the report says it is unfinished: a killed run leaves no report that looks complete
            self._write_report({"complete": False, "unfinished": [], "state": "running"})

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """xdist, on the controller: every case a worker collected (known even if the worker dies later)."""
        self.expected.update(nodeid.rsplit("::", 1)[-1].split("@", 1)[0] for nodeid in ids if _is_case(nodeid))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        """On the controller (also under xdist, where workers report their starts): one line per case."""
        if not self.worker and _is_case(nodeid):
            self._line(f"steer: start {nodeid.rsplit('::', 1)[-1].split('@', 1)[0]}")  # xdist appends @group

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On the controller (or a serial run): collect each case's report."""
        raw = getattr(report, "steer_report", None)
        if report.skipped and _is_case(report.nodeid):  # skipped on purpose: not unfinished
            self.skipped.add(report.nodeid.rsplit("::", 1)[-1].split("@", 1)[0])
        if raw is not None and report.when == "call" and not self.worker:
            case = CaseReport.from_json(json.loads(raw))
            self.reports.append(case)
            self.durations[case.id] = report.duration
            reused = " (reused)" if case.result is not None and case.result.reused else ""
            where = f"{case.worker}, {case.device}" if case.device else case.worker
            self._line(f"steer: {case.status:7} {case.id} in {report.duration:.1f} s{reused} on {where} "
                       f"[{len(self.reports)} done]")
            if self.options.update:
                self._accept(case)

    def _line(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.config.getoption("verbose") >= 0:
            reporter.ensure_newline()
            reporter.write_line(text)

    def _accept(self, case: CaseReport) -> None:
        """Write a case's baseline as soon as its report arrives: a later crash or kill loses nothing
        finished, and one failing write loses no other case."""
        if case.result is None or case.status == "error":
            return
        try:
            self.written.extend(self.baselines.write(case.result, task_slot(case.task, case.variant)))
        except (StoreError, OSError) as exc:
            self.write_errors.append(f"{case.id}: baseline not written: {exc}")

    @property
    def session(self) -> SteerSession:
        """The session that runs cases (imports torch on first use)."""
        if self._session is None:
            from pytest_steer.run.progress import ProgressBars
            from pytest_steer.run.session import SteerSession

            if self.worker:
                _share_cores_between_workers()
            capman = self.config.pluginmanager.getplugin("capturemanager")
            uses_xdist = self.worker or bool(getattr(self.config.option, "numprocesses", None))
            show = not uses_xdist and self.config.getoption("verbose") >= 0 and sys.stderr.isatty()
            self._session = SteerSession(self.options, ProgressBars(capman) if show else None,
                                         selected=self.selected_cases, run_id=self.run_id)
        return self._session

    def where(self, case: Case, fresh: bool) -> tuple[int, str]:
        """How often this process loaded the case's model, and where a freshly computed case ran ("" otherwise);
        nothing loaded (0, "") when no case ran here."""
        if self._session is None:
            return 0, ""
        loads = self._session.load_counts.get(case.model.name, 0)
        return loads, self._session.placement(case.model).describe() if fresh else ""

    def check_candidates(self, session: pytest.Session) -> None:
        """A candidate whose alias no selected case uses would test nothing and pass: refuse it."""
        controller = not self.worker and bool(getattr(self.config.option, "numprocesses", None))
        if not self.options.candidates or controller:  # an xdist controller collects nothing; its workers check
            return
        used = {item.case.model.name for item in session.items if isinstance(item, CaseItem)}
        unused = sorted(set(self.options.candidates) - used)
        if unused:
            raise pytest.UsageError(
                f"--steer-candidate {unused[0]}=...: no selected case uses model {unused[0]!r} "
                f"(models of the selected cases: {', '.join(sorted(used)) or 'none'})"
            )

    def compared(self) -> list[Any]:
        """Changes against the saved report of `--steer-compare` (computed once)."""
        if self._changes is None:
            from pytest_steer.judge.compare import compare

            self._changes = compare(self.reports, self.saved) if self.options.compare_path else []
        return self._changes

    def dropped(self) -> list[Any]:
        """Cases whose steered score fell by more than `--steer-compare-fail`."""
        limit = self.options.compare_fail
        return [] if limit is None else [c for c in self.compared() if c.drop > limit + 1e-12]

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """xdist, on the controller: give each worker this run's id."""
        node.workerinput["steer_run_id"] = self.run_id

    def finish(self) -> None:
        """On the controller (or a serial run): correct the run's regression tests together, write the JSON and
        HTML reports, drop the run's shared scores."""
        shutil.rmtree(shared_dir(self.options.cache_dir, self.run_id), ignore_errors=True)
        if self._run_lock is not None:
            self._run_lock.release()
            Path(self._run_lock.lock_file).unlink(missing_ok=True)
        if self.reports and not self.options.update:
            from pytest_steer.judge.multiple import correct

            self.reports, self.correction = correct(self.reports, self.options.multiple, self.options.alpha)
        if self.options.report_path and (self.reports or self.unfinished()) and not self.config.option.collectonly:
            self._write_report({"complete": not self.unfinished(), "unfinished": self.unfinished(),
                                "unused_baselines": self.unused_baselines()})
        if self.options.html_path and self.reports:
            from pytest_steer.report.html import write_html

            try:
                write_html(self.options.html_path, self.reports, self._stored)
            except OSError as exc:
                self.write_errors.append(f"--steer-html {self.options.html_path}: not written: {exc}")

    def unfinished(self) -> list[str]:
        """Selected cases with no report: their worker died, or the run was interrupted before them."""
        if self.config.option.collectonly:
            return []
        return sorted((self.expected | self.selected) - {r.id for r in self.reports} - self.skipped)

    def _write_report(self, extra: dict[str, Any]) -> None:
        try:
            write_json_report(self.options.report_path, sorted(self.reports, key=lambda r: r.id), extra)
        except OSError as exc:
            self.write_errors.append(f"--steer-report {self.options.report_path}: not written: {exc}")

    def _stored(self, report: CaseReport) -> CaseResult | None:
        """A case's stored baseline for the report's pictures (None if absent or unreadable)."""
        try:
            return self.baselines.load(report.model, report.method, task_slot(report.task, report.variant))
        except (StoreError, OSError):
            return None

    def filtered(self) -> bool:
        """A slice of the suite (-m, -k, a node id or a single case file): other cases' baselines are not stale."""
        option = self.config.option
        if getattr(option, "markexpr", "") or getattr(option, "keyword", ""):
            return True
        here = self.config.invocation_params.dir
        return any("::" in arg or (here / arg).is_file() for arg in self.config.args)

    def unused_baselines(self) -> list[str]:
        """Stored baselines that no selected case used (only on an unfiltered run, where that means stale)."""
        if not self.collected_any or self.crashed_workers or self.filtered():
            return []
        known = self.selected | self.held
        return [str(self.baselines.json_path(*ids)) for ids in sorted(self.baselines.all_ids()) if case_id(*ids) not in known]

    def summary(self, tr: Any) -> None:
        """The pytest-steer section of the terminal summary, as the report layer writes it."""
        if not self.reports and not self.collected_any:
            return
        from pytest_steer.report.summary import RunFacts, summary

        tr.section("pytest-steer")
        facts = RunFacts(
            reports=sorted(self.reports, key=lambda r: r.id), verbose=self.config.getoption("verbose") >= 0,
            width=tr._tw.fullwidth, markup=tr.hasmarkup, candidates=self.options.candidates, update=self.options.update,
            correction=self.correction, broken=self.broken, durations=self.durations, written=self.written,
            write_errors=self.write_errors, unused=self.unused_baselines(), crashed_workers=self.crashed_workers,
            unfinished=self.unfinished(), report_path=self.options.report_path, html_path=self.options.html_path,
            compare_path=self.options.compare_path, compared=self.compared(), dropped=self.dropped(),
            compare_fail=self.options.compare_fail,
        )
        for line in summary(facts):
            if line.block:
                tr.write(line.text)
            else:
                tr.write_line(line.text, **({line.color: True} if line.color else {}))


RUN_KEY = pytest.StashKey[SteerRun]()


def _is_case(nodeid: str) -> bool:
    return "::" in nodeid and Path(nodeid.split("::", 1)[0]).match(CASE_GLOB)


def _share_cores_between_workers() -> None:
    """Give each xdist worker its share of the cores: N workers x all-core torch threads thrash."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "steer: a pytest-steer case (model x method x task)")
    for method in methods():
        config.addinivalue_line("markers", f"{method}: pytest-steer cases of the {method} method")
    for family in FAMILIES:
        config.addinivalue_line("markers", f"{family}: pytest-steer cases on a {family} model")
    config.addinivalue_line("markers", "large: pytest-steer cases of the large profile (models of 1B+ parameters); "
                                       "collected only when -m names 'large'")
    run = SteerRun(config)
    config.stash[RUN_KEY] = run
    config.pluginmanager.register(run, "steer-run")


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
        first = self.config.stash[RUN_KEY].case_files
        candidates = self.config.stash[RUN_KEY].options.candidates
        for case in load_case_file(self.path):
            if isinstance(case, Case) and case.model.name in candidates:  # same id, same baselines, another source
                case = replace(case, model=candidates[case.model.name].apply(case.model))
            if isinstance(case, Case) and first.setdefault(case.id, self.path) != self.path:
                # one id is one baseline: a second definition must not share (and overwrite) it
                message = (f"{self.path}: case {case.id} is already defined in {first[case.id]}; "
                           "case ids must be unique across case files (rename a model, task or variant)")
                case = BrokenCase(case.id, message, self.path, case.model.name, case.method, case.task)
            if isinstance(case, BrokenCase):
                self.config.stash[RUN_KEY].broken.append(case)
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
    if parent.config.stash[RUN_KEY].options.group == "model":
        item.add_marker(pytest.mark.xdist_group(name=case.model.name))
    elif methods()[case.method].shares_work:  # its variants run in one pass: keep them on one worker
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
        session = self.config.stash[RUN_KEY].session
        result = session.result(self.case)
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not isinstance(item, (CaseItem, BrokenCaseItem)):
        return
    error = call.excinfo is not None and not isinstance(call.excinfo.value, (SteerFailure, SteerRegression))
    message = str(call.excinfo.value) if error and call.excinfo is not None else ""
    run = item.config.stash[RUN_KEY]
    if isinstance(item, CaseItem):
        c = item.case
        fresh = item.steer_result is not None and not item.steer_result.reused
        loads, device = run.where(c, fresh)
        missing = call.excinfo is not None and isinstance(call.excinfo.value, BaselineMissing)
        steer = CaseReport(c.id, c.model.name, c.method, c.task, c.variant, _status(report, error, missing),
                           item.steer_result,
                           item.steer_verdict, message, run.worker_id, loads, device)
    else:
        b = item.broken
        steer = CaseReport(b.id, b.model, b.method, b.task, "", "error", message=message, worker=run.worker_id)
    # A small JSON string (no tensors) on the report: it reaches the controller with the report
    # itself, so a worker that crashes later loses none of the cases it finished.
    report.steer_report = json.dumps(steer.to_json())


@pytest.fixture
def steer_case(request: pytest.FixtureRequest) -> Callable[..., CaseResult]:
    """Run one case (or reuse its result: from this process, or stored under unchanged inputs) and return its `CaseResult`.

        def test_qwen_keeps_its_layer(steer_case):
            result = steer_case("steering_cases/steer_task_vectors.toml", "qwen2.5-coder-0.5b-task_vector-present-past")
            assert result.chosen["layer"] in range(12, 20)

    The path is relative to the rootdir. The result holds the metrics (with the paired
    bootstrap interval), the dev curve, chosen settings, per-item outcomes and provenance.
    """
    run = request.config.stash[RUN_KEY]

    def get(case_file: str | Path, wanted: str) -> CaseResult:
        path = Path(case_file)
        path = path if path.is_absolute() else request.config.rootpath / path
        cases = {c.id: c for c in load_case_file(path)}
        if wanted not in cases:
            raise LookupError(f"{path}: no case {wanted!r} (cases: {', '.join(sorted(cases))})")
        case = cases[wanted]
        if isinstance(case, BrokenCase):
            raise CaseError(case.message)
        return run.session.result(case)

    return get


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Hold back the large profile unless -m names it; keep the cases of one model together (same order
    on every xdist worker)."""
    if "large" not in (getattr(config.option, "markexpr", "") or ""):
        held = [item for item in items if isinstance(item, CaseItem) and item.case.options.profile == "large"]
        if held:
            config.stash[RUN_KEY].held.update(item.name for item in held)
            config.hook.pytest_deselected(items=held)
            items[:] = [item for item in items if item not in held]
    slots = [i for i, item in enumerate(items) if isinstance(item, CaseItem)]
    ordered = sorted((items[i] for i in slots), key=lambda it: it.case.model.name)  # type: ignore[attr-defined]
    for slot, item in zip(slots, ordered):
        items[slot] = item


def pytest_collection_finish(session: pytest.Session) -> None:
    run = session.config.stash[RUN_KEY]
    for item in session.items:
        if isinstance(item, (CaseItem, BrokenCaseItem)):
            run.selected.add(item.name)
            run.collected_any = True
        if isinstance(item, CaseItem):
            run.selected_cases.append(item.case)
    if run.worker:
        session.config.workeroutput["steer_selected"] = sorted(run.selected | run.held)  # type: ignore[attr-defined]
    run.check_candidates(session)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """On the xdist controller: learn which cases a worker selected (for the unused-baselines list)."""
    run = node.config.stash[RUN_KEY]
    selected = getattr(node, "workeroutput", {}).get("steer_selected")
    if error or selected is None:
        run.crashed_workers += 1
        return
    run.selected.update(selected)
    run.collected_any = run.collected_any or bool(selected)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash[RUN_KEY]
    if not run.worker:
        run.finish()
        failed_compare = bool(run.options.compare_path) and bool(run.dropped())
        late = run.correction is not None and bool(run.correction.late)
        if (run.write_errors or failed_compare or late or run.unfinished()) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash[RUN_KEY]
    if not run.worker:
        run.summary(terminalreporter)

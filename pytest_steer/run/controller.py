"""SteerRun: this process's pytest-steer state, and what each pytest hook asks of it (no torch until a case runs)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from xdist import get_xdist_worker_id, is_xdist_worker

from pytest_steer.cases.casefile import BrokenCase, Case, case_id, task_slot
from pytest_steer.record import CaseResult
from pytest_steer.report.cases import CaseReport, write_json_report
from pytest_steer.run.heartbeat import Beacon, Ticker, beats_folder
from pytest_steer.run.items import BrokenCaseItem, CaseItem, case_report
from pytest_steer.run.options import SteerOptions, resolve_options
from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.storage.files import StoreError, check_output, hold_run, shared_dir

if TYPE_CHECKING:
    from pytest_steer.run.session import SteerSession

CASE_GLOB = "steer_*.toml"


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
        self.beacon: Beacon | None = None  # this process's current case and step, for the controller's lines
        self._ticker: Ticker | None = None
        self._terminal = threading.Lock()  # the ticker's thread and the main thread share the terminal
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
        if not self.worker and self.options.progress_every > 0 and not self.config.option.collectonly \
                and self.config.getoption("verbose") >= 0 and not self._bars_shown():
            self._ticker = Ticker(self._beats(), self.options.progress_every, self._line)
            self._ticker.start()
        if not self.worker and self.options.report_path and not self.config.option.collectonly:
            # until the run ends, the report says it is unfinished: a killed run leaves no report that looks complete
            self._write_report({"complete": False, "unfinished": [], "state": "running"})

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """xdist, on the controller: every case a worker collected (known even if the worker dies later)."""
        self.expected.update(_case_name(nodeid) for nodeid in ids if _is_case(nodeid))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        """On the controller (also under xdist, where workers report their starts): one line per case."""
        if not self.worker and _is_case(nodeid):
            self._line(f"steer: start {_case_name(nodeid)}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """On the controller (or a serial run): collect each case's report."""
        raw = getattr(report, "steer_report", None)
        if report.skipped and _is_case(report.nodeid):  # skipped on purpose: not unfinished
            self.skipped.add(_case_name(report.nodeid))
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
        if reporter is None or self.config.getoption("verbose") < 0:
            return
        capman = self.config.pluginmanager.getplugin("capturemanager")
        with self._terminal, (capman.global_and_fixture_disabled() if capman is not None else nullcontext()):
            reporter.ensure_newline()
            reporter.write_line(text)

    def _beats(self) -> Path:
        return beats_folder(shared_dir(self.options.cache_dir, self.run_id))

    def _bars_shown(self) -> bool:
        """Progress bars on a serial run's terminal (they show the steps; no lines needed)."""
        uses_xdist = self.worker or bool(getattr(self.config.option, "numprocesses", None))
        return not uses_xdist and self.config.getoption("verbose") >= 0 and sys.stderr.isatty()

    def result(self, case: Case) -> CaseResult:
        """The case's result from the session, with this process's progress naming the case meanwhile."""
        session = self.session
        with self.beacon.case(case.id) if self.beacon is not None else nullcontext():
            return session.result(case)

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
            progress = ProgressBars(capman) if self._bars_shown() else None
            if self.options.progress_every > 0:
                self.beacon = Beacon(self._beats(), self.worker_id, progress)
                progress = self.beacon
            self._session = SteerSession(self.options, progress, selected=self.selected_cases, run_id=self.run_id,
                                         process=getattr(self.config, "workerinput", {}).get("workerid", "master"))
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
        if self._ticker is not None:
            self._ticker.stop()
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

    def report_made(self, item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
        """Leave a case item's CaseReport on its pytest report, as a small JSON string (no tensors): it reaches the
        controller with the report itself, so a worker that crashes later loses none of the cases it finished."""
        case = case_report(item, call, report)
        if case is not None:
            report.steer_report = json.dumps(case.to_json())  # type: ignore[attr-defined]

    def order(self, items: list[pytest.Item]) -> None:
        """Hold back the large profile unless -m names it; keep the cases of one model together and the cases of
        one work group next to each other (same order on every xdist worker)."""
        if "large" not in (getattr(self.config.option, "markexpr", "") or ""):
            held = [item for item in items if isinstance(item, CaseItem) and item.case.options.profile == "large"]
            if held:
                self.held.update(item.name for item in held)
                self.config.hook.pytest_deselected(items=held)
                items[:] = [item for item in items if item not in held]
        slots = [i for i, item in enumerate(items) if isinstance(item, CaseItem)]
        # a model's cases together, and the cases of one work group next to the first of them (so the workers that
        # take them share it); otherwise in collection order
        first: dict[tuple[str, str, str], int] = {}
        for k in slots:
            case = items[k].case  # type: ignore[attr-defined]
            first.setdefault((case.model.name, case.method, case.task), k)
        ordered = sorted((items[i] for i in slots), key=lambda it: (
            it.case.model.name, first[(it.case.model.name, it.case.method, it.case.task)]))  # type: ignore[attr-defined]
        for slot, item in zip(slots, ordered):
            items[slot] = item

    def collected(self, session: pytest.Session) -> None:
        """Note the selected cases (a worker also tells the controller); refuse a candidate no case uses."""
        for item in session.items:
            if isinstance(item, (CaseItem, BrokenCaseItem)):
                self.selected.add(item.name)
                self.collected_any = True
            if isinstance(item, CaseItem):
                self.selected_cases.append(item.case)
        if self.worker:
            self.config.workeroutput["steer_selected"] = sorted(self.selected)  # type: ignore[attr-defined]
            self.config.workeroutput["steer_held"] = sorted(self.held)  # type: ignore[attr-defined]
        self.check_candidates(session)

    def node_down(self, node: Any, error: Any) -> None:
        """On the xdist controller: learn which cases a worker selected (for the unused-baselines list)."""
        output = getattr(node, "workeroutput", {})
        selected = output.get("steer_selected")
        if error or selected is None:
            self.crashed_workers += 1
            return
        self.selected.update(selected)
        self.held.update(output.get("steer_held", ()))  # not run on purpose: neither unfinished nor stale
        self.collected_any = self.collected_any or bool(selected)

    def end(self, session: pytest.Session) -> None:
        """On the controller: finish the run; a lost report, a failed comparison, a late regression or an
        unfinished case fails an otherwise green run."""
        if self.worker:
            return
        self.finish()
        failed_compare = bool(self.options.compare_path) and bool(self.dropped())
        late = self.correction is not None and bool(self.correction.late)
        if (self.write_errors or failed_compare or late or self.unfinished()) and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def summary(self, tr: Any) -> None:
        """The pytest-steer section of the terminal summary, as the report layer writes it."""
        if self.worker or (not self.reports and not self.collected_any):
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


def _is_case(nodeid: str) -> bool:
    return "::" in nodeid and Path(nodeid.split("::", 1)[0]).match(CASE_GLOB)


def _case_name(nodeid: str) -> str:
    """The case id of a node id (`file::id`, to which xdist's loadgroup appends `@group`)."""
    return nodeid.rsplit("::", 1)[-1].split("@", 1)[0]


def _share_cores_between_workers() -> None:
    """Give each xdist worker its share of the cores: N workers x all-core torch threads thrash."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(workers, 1)))

"""pytest hooks: options, markers, collection of case files, the steer_case fixture; every other hook is one call
into `SteerRun` (run/controller.py), this process's state. Nothing here imports torch: the session that runs cases
is created on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_steer.cases.casefile import FAMILIES, BrokenCase, load_case_file
from pytest_steer.methods import methods
from pytest_steer.record import CaseResult
from pytest_steer.run import RUN_KEY, run_of
from pytest_steer.run.controller import CASE_GLOB, SteerRun
from pytest_steer.run.items import CaseError, CaseFile
from pytest_steer.run.options import add_options


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


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.match(CASE_GLOB):
        return CaseFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    run_of(item.config).report_made(item, call, outcome.get_result())


@pytest.fixture
def steer_case(request: pytest.FixtureRequest) -> Callable[..., CaseResult]:
    """Run one case (or reuse its result: from this process, or stored under unchanged inputs) and return its `CaseResult`.

        def test_qwen_keeps_its_layer(steer_case):
            result = steer_case("steering_cases/steer_task_vectors.toml", "qwen2.5-coder-0.5b-task_vector-present-past")
            assert result.chosen["layer"] in range(12, 20)

    The path is relative to the rootdir. The result holds the metrics (with the paired
    bootstrap interval), the dev curve, chosen settings, per-item outcomes and provenance.
    """
    run = run_of(request.config)

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
    run_of(config).order(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    run_of(session.config).collected(session)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    run_of(node.config).node_down(node, error)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run_of(session.config).end(session)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run_of(config).summary(terminalreporter)

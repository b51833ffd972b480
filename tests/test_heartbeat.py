"""Progress lines: what each process is doing reaches the controller's terminal, also under xdist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pytest_steer.run.heartbeat import Beacon, Beat, Ticker, read_beats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_names_the_case_its_step_and_an_estimate() -> None:
    beat = Beat("gw1", "m-dola-t", case_started=0.0, label="DoLa lower on t", done=100, total=400, step_started=40.0)
    assert beat.line(now=240.0) == "steer: gw1 m-dola-t: 4 min in; DoLa lower on t 100/400, about 10 min left"
    assert Beat("main", "c", 0.0).line(now=30.0) == "steer: main c: 30 s in"
    # a step that reports only its start and end: its count, no estimate
    assert Beat("gw0", "c", 0.0, "dev search", 0, 1, 5.0).line(now=8000.0) == "steer: gw0 c: 2.2 h in; dev search 0/1"


def test_the_beacon_records_the_current_step_and_forgets_it_when_the_case_ends(tmp_path: Path) -> None:
    clock, seen = Clock(), []
    beacon = Beacon(tmp_path / "progress", "gw0", lambda *a: seen.append(a), clock)
    beacon("fetching", 1, 4)  # outside a case: passed on, not recorded
    assert seen == [("fetching", 1, 4)] and not (tmp_path / "progress").exists()
    with beacon.case("m-task_vector-t"):
        clock.now += 5
        beacon("scoring", 0, 10)
        clock.now += 0.2
        beacon("scoring", 1, 10)  # within a second of the last write: not written yet
        (beat,) = read_beats(tmp_path / "progress")
        assert (beat.case, beat.label, beat.done, beat.total) == ("m-task_vector-t", "scoring", 0, 10)
        clock.now += 2
        beacon("scoring", 5, 10)
        (beat,) = read_beats(tmp_path / "progress")
        assert beat.done == 5 and beat.step_started == 1005.0 and beat.case_started == 1000.0
    assert read_beats(tmp_path / "progress") == []
    assert len(seen) == 4


def test_a_beacon_that_cannot_write_loses_only_its_lines(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    beacon = Beacon(blocker / "progress", "gw0")  # its folder cannot be created
    with beacon.case("c"):
        beacon("step", 1, 2)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '{"worker": 1}', '{"worker": "w", "case": "c"}',
                                  '{"worker": "w", "case": "c", "case_started": "soon"}', "[" * 5000])
def test_a_damaged_beat_file_is_skipped(tmp_path: Path, text: str) -> None:
    (tmp_path / "gw0.json").write_text(text)
    (tmp_path / "gw1.json").write_text(json.dumps({"worker": "gw1", "case": "c", "case_started": 1.0}))
    assert [b.worker for b in read_beats(tmp_path)] == ["gw1"]


def test_the_ticker_writes_one_line_per_busy_process(tmp_path: Path) -> None:
    clock, lines = Clock(), []
    first, second = Beacon(tmp_path, "gw0", clock=clock), Beacon(tmp_path, "gw1", clock=clock)
    ticker = Ticker(tmp_path, 30, lines.append, clock)
    with first.case("a"), second.case("b"):
        first("DoLa on t", 3, 6)
        clock.now += 60
        assert ticker.tick() == ["steer: gw0 a: 60 s in; DoLa on t 3/6, about 60 s left", "steer: gw1 b: 60 s in"]
    assert ticker.tick() == [] and len(lines) == 2


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_run_prints_progress_lines_while_cases_run(suite, workers: list[str]) -> None:
    write, run = suite
    write(models='["tinya"]')
    result = run(*workers, "--steer-update", "--steer-progress=0.02")
    result.assert_outcomes(passed=2)
    beats = [line for line in result.stdout.lines if re.match(r"steer: (gw\d|master) tinya-task_vector-\w+: \d+ s in", line)]
    assert beats, result.stdout.str()
    assert (workers and all(b.split()[1].startswith("gw") for b in beats)) or not workers


def test_progress_lines_can_be_turned_off_and_a_bad_interval_is_named(suite) -> None:
    write, run = suite
    write(models='["tinya"]')
    result = run("--steer-update", "--steer-progress=0")
    result.assert_outcomes(passed=2)
    assert not [line for line in result.stdout.lines if " s in" in line]
    result = run("--steer-progress=-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--steer-progress: expected seconds >= 0*"])

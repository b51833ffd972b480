"""Progress a person can follow: each process writes what it is doing (case, step, done of total) to a small file
in the run's shared folder, and the controller prints a line per busy process every few seconds, also under
xdist, where workers' output never reaches the terminal (no torch)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pytest_steer.record import RecordError, check_record
from pytest_steer.storage.files import atomic_write_json

Progress = Callable[[str, int, int], None]
WRITE_EVERY = 1.0  # seconds between two writes of the same step (a new step or its end is written at once)


@dataclass(frozen=True)
class Beat:
    """What one process is doing now."""

    worker: str
    case: str
    case_started: float
    label: str = ""
    done: int = 0
    total: int = 0
    step_started: float = 0.0

    def line(self, now: float) -> str:
        """One line for the terminal: the case, how long it has run, the step's count and an estimate."""
        text = f"steer: {self.worker} {self.case}: {_duration(now - self.case_started)} in"
        if not self.label:
            return text
        text += f"; {self.label}"
        if self.total > 1 or self.done < self.total:
            text += f" {self.done}/{self.total}"
            if 0 < self.done < self.total:
                rate = (now - self.step_started) / self.done
                text += f", about {_duration(rate * (self.total - self.done))} left"
        return text

    @classmethod
    def from_json(cls, data: Any) -> Beat | None:
        """A beat read back; None for anything else (a half-written or foreign file is skipped, never fatal)."""
        try:
            return check_record(cls, data, "")  # type: ignore[no-any-return]
        except RecordError:
            return None


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Beacon:
    """A `progress(label, done, total)` callback that also records this process's current step for the controller.
    Writing is best effort: a read-only or full cache loses the progress lines, never the run."""

    def __init__(self, folder: Path, worker: str, also: Progress | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = folder / f"{worker}.json"
        self.worker = worker
        self.also = also
        self.clock = clock
        self.beat: Beat | None = None
        self._written = 0.0

    @contextmanager
    def case(self, case_id: str) -> Iterator[None]:
        """The case this process runs while the block lasts."""
        self.beat = Beat(self.worker, case_id, self.clock())
        self._write(force=True)
        try:
            yield
        finally:
            self.beat = None
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass

    def __call__(self, label: str, done: int, total: int) -> None:
        if self.also is not None:
            self.also(label, done, total)
        if self.beat is None:
            return
        new = label != self.beat.label
        started = self.clock() if new else self.beat.step_started
        self.beat = replace(self.beat, label=label, done=done, total=total, step_started=started)
        self._write(force=new or done >= total)

    def _write(self, force: bool) -> None:
        now = self.clock()
        if self.beat is None or (not force and now - self._written < WRITE_EVERY):
            return
        try:
            atomic_write_json(self.path, asdict(self.beat))  # creates the folder
            self._written = now
        except OSError:
            pass


def read_beats(folder: Path) -> list[Beat]:
    """The beats of every process of the run, by worker."""
    beats = []
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            beat = Beat.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, RecursionError):
            continue
        if beat is not None:
            beats.append(beat)
    return beats


class Ticker:
    """On the controller: every `every` seconds, one line per busy process through `write`."""

    def __init__(self, folder: Path, every: float, write: Callable[[str], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.every = every
        self.write = write
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="steer-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def tick(self) -> list[str]:
        """The lines of this moment (written and returned)."""
        now = self.clock()
        lines = [beat.line(now) for beat in read_beats(self.folder)]
        for line in lines:
            self.write(line)
        return lines

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - progress must never end a run
                pass


def beats_folder(shared: Path) -> Path:
    """Where a run's beats live: inside its shared folder, removed with it when the run ends."""
    return shared / "progress"


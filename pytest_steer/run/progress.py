"""Progress bars for long steps (fetch, conversion, extraction), outside pytest's capture."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class ProgressBars:
    """A `progress(label, done, total)` callback that draws rich bars on the real terminal."""

    def __init__(self, capture_manager: Any | None) -> None:
        self._capman = capture_manager
        self._progress: Progress | None = None
        self._tasks: dict[str, Any] = {}

    def _suspended(self) -> Any:
        if self._capman is None:
            return nullcontext()
        return self._capman.global_and_fixture_disabled()

    def __call__(self, label: str, done: int, total: int) -> None:
        with self._suspended():
            if self._progress is None:
                console = Console(file=sys.stderr)
                self._progress = Progress(
                    TextColumn("[bold]steer[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True, auto_refresh=False,
                )
                self._progress.start()
            if label not in self._tasks:
                self._tasks[label] = self._progress.add_task(label, total=max(total, 1))
            task = self._tasks[label]
            self._progress.update(task, completed=done, total=max(total, 1))
            if done >= total:
                self._progress.remove_task(task)
                del self._tasks[label]
            self._progress.refresh()
            if not self._tasks:
                self._progress.stop()
                self._progress = None

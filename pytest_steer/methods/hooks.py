"""Forward hooks that read or edit a module's output at the last token position.

Decoder blocks return a bare tensor in recent transformers and a tuple in older
ones; both are handled, and every hook reports whether it fired and what it changed
so a steering run that silently did nothing is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class HookReport:
    """How often an editing hook ran and the largest change it made."""

    calls: int = 0
    rows: int = 0
    max_abs_change: float = 0.0

    @property
    def fired_and_changed(self) -> bool:
        return self.calls > 0 and self.max_abs_change > 0.0


def _hidden(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


def _rebuild(output: object, hidden: torch.Tensor) -> object:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden  # type: ignore[index]


@contextmanager
def edit_last_token(
    module: torch.nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[HookReport]:
    """Replace the module's output at position -1 by `edit(last)` (shape (batch, hidden))."""
    report = HookReport()

    def hook(_mod: torch.nn.Module, _inputs: object, output: object) -> object:
        hidden = _hidden(output)
        last = hidden[:, -1, :]
        new_last = edit(last).to(hidden.dtype)
        edited = hidden.clone()
        edited[:, -1, :] = new_last
        report.calls += 1
        report.rows += hidden.shape[0]
        report.max_abs_change = max(report.max_abs_change, float((new_last - last).abs().max()))
        return _rebuild(output, edited)

    handle = module.register_forward_hook(hook)
    try:
        yield report
    finally:
        handle.remove()


@contextmanager
def capture_last_token(modules: Sequence[torch.nn.Module]) -> Iterator[list[list[torch.Tensor]]]:
    """Collect each module's output at position -1, one list of (batch, hidden) chunks per module."""
    captured: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = []
    try:
        for i, module in enumerate(modules):
            def hook(_mod: torch.nn.Module, _inputs: object, output: object, i: int = i) -> None:
                captured[i].append(_hidden(output)[:, -1, :].detach().float().clone())

            handles.append(module.register_forward_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()

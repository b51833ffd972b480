"""Forward hooks that read or edit a module's output at the last token position.

Decoder blocks return a bare tensor in recent transformers and a tuple in older
ones; both are handled, and every hook reports whether it fired and what it changed
so a steering run that silently did nothing is caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
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


def merge_report(reports: dict[int, HookReport], key: int, report: HookReport) -> None:
    """Accumulate `report` into `reports[key]` (several batches hook the same module)."""
    total = reports.setdefault(key, HookReport())
    total.calls += report.calls
    total.rows += report.rows
    total.max_abs_change = max(total.max_abs_change, report.max_abs_change)


def _hidden(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


def _rebuild(output: object, hidden: torch.Tensor) -> object:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden  # type: ignore[index]


def _edit_last(x: torch.Tensor, edit: Callable[[torch.Tensor], torch.Tensor], report: HookReport) -> torch.Tensor:
    """A copy of `x` (batch, seq, width) with position -1 replaced by `edit(last)`; updates `report`."""
    last = x[:, -1, :]
    new_last = edit(last).to(x.dtype)
    edited = x.clone()
    edited[:, -1, :] = new_last
    report.calls += 1
    report.rows += x.shape[0]
    report.max_abs_change = max(report.max_abs_change, float((new_last - last).abs().max()))
    return edited


@contextmanager
def edit_last_token(
    module: torch.nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[HookReport]:
    """Replace the module's output at position -1 by `edit(last)` (shape (batch, hidden))."""
    report = HookReport()

    def hook(_mod: torch.nn.Module, _inputs: object, output: object) -> object:
        return _rebuild(output, _edit_last(_hidden(output), edit, report))

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


@contextmanager
def edit_last_token_input(
    module: torch.nn.Module, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[HookReport]:
    """Replace the module's first input at position -1 by `edit(last)` (a forward pre-hook)."""
    report = HookReport()

    def hook(_mod: torch.nn.Module, args: tuple[object, ...]) -> tuple[object, ...]:
        x = args[0]
        assert isinstance(x, torch.Tensor)
        return (_edit_last(x, edit, report), *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield report
    finally:
        handle.remove()


@contextmanager
def capture_last_token_input(modules: Sequence[torch.nn.Module]) -> Iterator[list[list[torch.Tensor]]]:
    """Collect each module's first input at position -1, one list of (batch, width) chunks per module."""
    captured: list[list[torch.Tensor]] = [[] for _ in modules]
    handles = []
    try:
        for i, module in enumerate(modules):
            def hook(_mod: torch.nn.Module, args: tuple[object, ...], i: int = i) -> None:
                captured[i].append(args[0][:, -1, :].detach().float().clone())  # type: ignore[index]

            handles.append(module.register_forward_pre_hook(hook))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


# edit_rows(last, layer, rows, variant) -> new last: `rows` marks the rows steered at `layer`.
RowEdit = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor], torch.Tensor]


def edits_at_blocks(
    block: Callable[[int], torch.nn.Module], layer_of_variant: torch.Tensor, edit_rows: RowEdit,
    reports: dict[int, HookReport],
) -> Callable[[torch.Tensor], AbstractContextManager[None]]:
    """Build per-batch hooks: each row's variant picks the block whose last-token output it edits."""

    @contextmanager
    def intervene(variant: torch.Tensor) -> Iterator[None]:
        row_layer = layer_of_variant[variant]
        with ExitStack() as stack:
            for layer in torch.unique(row_layer).tolist():
                rows = row_layer == layer

                def edit(last: torch.Tensor, layer: int = layer, rows: torch.Tensor = rows) -> torch.Tensor:
                    return edit_rows(last, layer, rows, variant)

                report = stack.enter_context(edit_last_token(block(layer), edit))
                stack.callback(merge_report, reports, layer, report)
            yield

    return intervene

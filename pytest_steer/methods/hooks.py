"""One hook builder: read or edit a module's output or input at the last token position.

Decoder blocks return a bare tensor in recent transformers and a tuple in older ones;
both are handled. Every editing hook reports whether it fired and what it changed, so a
steering run that silently did nothing is caught. Hooks are removed in `finally`, and an
edit is cast to the activation's device and dtype inside the hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

Site = Literal["output", "input"]
# fn(module index, last-token rows (batch, width)) -> new rows (an edit) or None (a read)
LastTokenFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]
# Builds the hooks for one batch, given the intervention index of every row.
Intervene = Callable[[torch.Tensor], AbstractContextManager[object]]
# edit(last, layer, rows, intervention) -> new last: `rows` marks the rows edited at `layer`.
RowEdit = Callable[[torch.Tensor, int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class HookReport:
    """How often an editing hook ran and the largest change it made."""

    calls: int = 0
    rows: int = 0
    max_abs_change: float = 0.0

    @property
    def fired_and_changed(self) -> bool:
        return self.calls > 0 and self.max_abs_change > 0.0

    def merge(self, other: HookReport) -> None:
        """Accumulate another report of the same module (several batches hook it)."""
        self.calls += other.calls
        self.rows += other.rows
        self.max_abs_change = max(self.max_abs_change, other.max_abs_change)


def _hidden(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


@contextmanager
def last_token_hooks(modules: Sequence[torch.nn.Module], site: Site, fn: LastTokenFn) -> Iterator[list[HookReport]]:
    """Call `fn(i, last)` on module i's output (or first input) at position -1 on every forward.

    Where `fn` returns a tensor, it replaces that position (cast to the activation's
    dtype); the yielded reports count calls, rows and the largest change.
    """
    reports = [HookReport() for _ in modules]

    def apply(i: int, x: torch.Tensor) -> torch.Tensor | None:
        last = x[:, -1, :]
        new_last = fn(i, last)
        if new_last is None:
            return None
        new_last = new_last.to(device=x.device, dtype=x.dtype)
        edited = x.clone()
        edited[:, -1, :] = new_last
        report = reports[i]
        report.calls += 1
        report.rows += x.shape[0]
        report.max_abs_change = max(report.max_abs_change, float((new_last.detach() - last.detach()).abs().max()))
        return edited

    def output_hook(i: int) -> Callable[..., object]:
        def hook(_mod: torch.nn.Module, _inputs: object, output: object) -> object:
            edited = apply(i, _hidden(output))
            if edited is None:
                return None
            return (edited, *output[1:]) if isinstance(output, tuple) else edited  # type: ignore[index]
        return hook

    def input_hook(i: int) -> Callable[..., object]:
        def hook(_mod: torch.nn.Module, args: tuple[object, ...]) -> object:
            x = args[0]
            assert isinstance(x, torch.Tensor)
            edited = apply(i, x)
            return None if edited is None else (edited, *args[1:])
        return hook

    handles = []
    try:
        for i, module in enumerate(modules):
            if site == "output":
                handles.append(module.register_forward_hook(output_hook(i)))
            else:
                handles.append(module.register_forward_pre_hook(input_hook(i)))
        yield reports
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_last_token(modules: Sequence[torch.nn.Module], site: Site = "output") -> Iterator[list[list[torch.Tensor]]]:
    """Collect each module's output (or input) at position -1 in float32 on the CPU (means accumulate there,
    whatever the weight dtype and device): one list of (batch, width) chunks per module."""
    captured: list[list[torch.Tensor]] = [[] for _ in modules]

    def read(i: int, last: torch.Tensor) -> None:
        captured[i].append(last.detach().float().cpu().clone())

    with last_token_hooks(modules, site, read):
        yield captured


def edits_at(
    module: Callable[[int], torch.nn.Module], site: Site, layer_of: torch.Tensor, edit: RowEdit,
    reports: dict[int, HookReport],
) -> Intervene:
    """Per-batch hooks: each row's intervention picks the layer (`layer_of[intervention]`) whose
    module it edits at the last token; reports are merged per layer across batches."""

    @contextmanager
    def intervene(intervention: torch.Tensor) -> Iterator[None]:
        row_layer = layer_of[intervention]
        layers = torch.unique(row_layer).tolist()

        def fn(i: int, last: torch.Tensor) -> torch.Tensor:
            return edit(last, layers[i], (row_layer == layers[i]).to(last.device), intervention.to(last.device))

        with last_token_hooks([module(l) for l in layers], site, fn) as batch_reports:
            yield
        for layer, report in zip(layers, batch_reports):
            reports.setdefault(layer, HookReport()).merge(report)

    return intervene


def silent_layers(layers: Sequence[int], reports: dict[int, HookReport]) -> list[int]:
    """The layers whose hooks never fired or changed nothing."""
    return [l for l in layers if l not in reports or not reports[l].fired_and_changed]


def adds_everywhere(
    module: Callable[[int], torch.nn.Module], vectors: dict[int, torch.Tensor], scale: torch.Tensor,
    reports: dict[int, HookReport],
) -> Intervene:
    """Per-batch hooks adding `scale[intervention] * vectors[layer]` to block `layer`'s output at every position,
    for every layer of `vectors` at once (a control vector's own layers); a row whose scale is 0 is unchanged."""

    @contextmanager
    def intervene(intervention: torch.Tensor) -> Iterator[None]:
        batch_reports = {layer: HookReport() for layer in vectors}

        def hook_for(layer: int) -> Callable[..., object]:
            def hook(_mod: torch.nn.Module, _inputs: object, output: object) -> object:
                x = _hidden(output)
                rows = scale[intervention].to(device=x.device, dtype=torch.float32)
                delta = rows[:, None, None] * vectors[layer].to(device=x.device, dtype=torch.float32)
                edited = (x.float() + delta).to(x.dtype)
                report = batch_reports[layer]
                report.calls += 1
                report.rows += int((rows != 0).sum())
                report.max_abs_change = max(report.max_abs_change, float((edited - x).abs().max()))
                return (edited, *output[1:]) if isinstance(output, tuple) else edited  # type: ignore[index]
            return hook

        handles = []
        try:
            for layer in vectors:
                handles.append(module(layer).register_forward_hook(hook_for(layer)))
            yield
        finally:
            for handle in handles:
                handle.remove()
        for layer, report in batch_reports.items():
            reports.setdefault(layer, HookReport()).merge(report)

    return intervene

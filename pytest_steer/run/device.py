"""Where a model runs: the device and weight dtype a run asks for, the GPUs an xdist worker takes, and
out-of-memory back-off. The resolution functions are pure (what is available is passed in)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pytest_steer.errors import SteerError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_CUDA_N = re.compile(r"^cuda:(\d+)$")
DEVICE_FORM = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")

T = TypeVar("T")


class DeviceError(SteerError, ValueError):
    """A device or dtype that cannot be used here; the message says what is available."""


@dataclass(frozen=True)
class Placement:
    """The device a model's weights go to (or "auto" with `device_map`), and their dtype."""

    device: str  # "cpu", "cuda:0", "mps"; with device_map "auto", the device of the first block
    dtype: str
    device_map: str | None = None  # "auto": accelerate spreads the blocks over the worker's GPUs (and CPU)
    gpus: tuple[int, ...] = ()  # the visible GPU indices this worker took (xdist)
    physical: tuple[str, ...] = ()  # their names outside this process (CUDA_VISIBLE_DEVICES entries)

    def describe(self) -> str:
        """'cuda:1/bfloat16 (GPU 3)', 'cpu/float32', 'cuda:0/bfloat16 (GPU 0, 1; device_map auto)'."""
        notes = [f"GPU {', '.join(self.physical)}"] if self.physical else []
        if self.device_map:
            notes.append(f"device_map {self.device_map}")
        return f"{self.device}/{self.dtype}" + (f" ({'; '.join(notes)})" if notes else "")


def resolve_device(requested: str, cuda_count: int, mps: bool, where: str = "--steer-device") -> str:
    """'auto' -> cuda:0 if a GPU is visible, else mps, else cpu; 'cuda' -> cuda:0; checks that it exists."""
    value = (requested or "auto").strip().lower()
    if value == "auto":
        return "cuda:0" if cuda_count else ("mps" if mps else "cpu")
    if value == "cpu":
        return "cpu"
    if value == "mps":
        if not mps:
            raise DeviceError(f"{where}: 'mps' asked for, but this torch has no MPS backend available")
        return "mps"
    if value == "cuda":
        value = "cuda:0"
    match = _CUDA_N.match(value)
    if not match:
        raise DeviceError(f"{where}: expected one of {', '.join(DEVICES)}, got {requested!r}")
    index = int(match.group(1))
    if index >= cuda_count:
        seen = "no CUDA device is visible" if not cuda_count else f"{cuda_count} CUDA device(s) are visible (cuda:0..cuda:{cuda_count - 1})"
        raise DeviceError(f"{where}: {requested!r} asked for, but {seen}")
    return value


def available() -> tuple[int, bool]:
    """This machine's visible CUDA devices and whether MPS is there (imports torch)."""
    import torch

    return torch.cuda.device_count(), bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def check_available(requested: str, where: str = "--steer-device") -> str:
    """`resolve_device` against this machine's torch."""
    return resolve_device(requested, *available(), where)


def resolve_dtype(requested: str | None, device: str, where: str = "--steer-dtype") -> str:
    """'auto' (or nothing) -> float32 on the CPU, bfloat16 on a GPU."""
    value = (requested or "auto").strip().lower()
    if value not in DTYPES:
        raise DeviceError(f"{where}: expected one of {', '.join(DTYPES)}, got {requested!r}")
    if value == "auto":
        return "float32" if device == "cpu" else "bfloat16"
    return value


def worker_gpus(worker: int, gpu_count: int, per_worker: int = 1) -> list[int]:
    """The visible GPU indices xdist worker `worker` (gw0 -> 0) takes: GPU k mod G, or a group of
    `per_worker` consecutive GPUs (wrapping) for models sharded over several. Indices are into the
    visible set, so an outer CUDA_VISIBLE_DEVICES is respected."""
    if gpu_count <= 0:
        return []
    if per_worker < 1 or per_worker > gpu_count:
        raise DeviceError(f"--steer-gpus-per-worker: expected 1..{gpu_count} (the visible GPUs), got {per_worker}")
    groups = gpu_count // per_worker
    start = (worker % groups) * per_worker
    return list(range(start, start + per_worker))


def physical_gpus(indices: list[int], visible: str | None) -> list[str]:
    """The names of visible GPU indices outside this process (CUDA_VISIBLE_DEVICES entries), for the report."""
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return [names[i] if i < len(names) else str(i) for i in indices]


def worker_index(worker_id: str) -> int | None:
    """`gw3` -> 3; None for the controller or a serial run."""
    match = re.fullmatch(r"gw(\d+)", worker_id)
    return int(match.group(1)) if match else None


class OutOfMemory(SteerError, RuntimeError):
    """A run that did not fit even one row at a time; the message names the case and the memory it needed."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA (or MPS) out-of-memory error, as torch raises it."""
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def with_backoff(run: Callable[[int], T], batch_size: int, what: str, peak: Callable[[], float] = lambda: 0.0,
                 release: Callable[[], None] = lambda: None) -> tuple[T, int]:
    """`run(batch_size)`, halving the batch on out-of-memory errors down to one row; the result and the
    batch size that fitted. `peak()` gives the memory (GiB) the last try reached, `release()` frees cached memory."""
    size = max(1, batch_size)
    while True:
        try:
            return run(size), size
        except Exception as exc:  # only out-of-memory is retried; anything else goes up unchanged
            if not is_out_of_memory(exc):
                raise
            release()
            if size == 1:
                raise OutOfMemory(f"{what}: out of memory even one row at a time (peak {peak():.1f} GiB on the "
                                  "device); use a smaller dtype, device_map = \"auto\" over more GPUs, or the CPU") from exc
            size = max(1, size // 2)

"""Where a model comes from and how its layout may be overridden: plain records, no torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pytest_steer.errors import SteerError


class AdapterError(SteerError):
    """The layout of a model could not be determined or did not check out."""


@dataclass(frozen=True)
class ArchitectureOverride:
    """User-supplied layout; every non-``None`` field beats registry and guess.

    ``blocks`` and ``final_norm`` are dotted paths from the model root
    (``"model.layers"``, ``"model.norm"``); ``attn_out`` is relative to a block
    (``"self_attn.o_proj"``).
    """

    blocks: str | None = None
    attn_out: str | None = None
    final_norm: str | None = None
    num_heads: int | None = None
    head_dim: int | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str) -> ArchitectureOverride:
        """Build from a config mapping; ``where`` prefixes every error message."""
        if not isinstance(data, Mapping):
            raise AdapterError(f"{where}: expected a mapping, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise AdapterError(
                f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                f"allowed: {', '.join(known)}"
            )
        values: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:
                continue
            if key in ("num_heads", "head_dim"):
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise AdapterError(f"{where}: {key!r} must be a positive integer, got {value!r}")
            elif not isinstance(value, str) or not value.strip():
                raise AdapterError(f"{where}: {key!r} must be a non-empty dotted path string, got {value!r}")
            values[key] = value
        return cls(**values)

    def is_empty(self) -> bool:
        """True when no field is set."""
        return all(getattr(self, f.name) is None for f in fields(self))



@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from. `kind` is packaged, folder, hub or gguf."""

    name: str
    kind: str
    location: str
    revision: str | None = None
    override: ArchitectureOverride | None = None
    trust_remote_code: bool = False  # run the model repository's own Python code (opt-in per model)
    allow_pickle: bool = False  # accept pickled (.bin) weights, not only safetensors (opt-in per model)
    device: str | None = None  # None: --steer-device
    dtype: str | None = None  # None: --steer-dtype
    device_map: str | None = None  # "auto": spread the blocks over the visible GPUs (accelerate)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "location": self.location, "revision": self.revision}
        for opt_in in ("trust_remote_code", "allow_pickle"):
            if getattr(self, opt_in):
                out[opt_in] = True
        for placed in ("device", "dtype", "device_map"):
            if getattr(self, placed) is not None:
                out[placed] = getattr(self, placed)
        return out



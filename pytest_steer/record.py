"""The typed records of a case: its result (built once, never mutated) and how it is stored.

A baseline file is written from an explicit list of kept fields (`CaseResult.to_baseline`),
so a run-time field never leaks into it; `CaseResult.from_baseline` reads every baseline
layout this project has written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 2  # baseline files without a schema field (written before typed records) have the same layout


def _finite(data: dict[str, Any], key: str) -> float:
    """A stored number, rejected when it is NaN or infinite (a NaN would turn every comparison off)."""
    value = float(data[key])
    if not math.isfinite(value):
        raise ValueError(f"metric '{key}' is {data[key]!r}, not a finite number")
    return value


@dataclass(frozen=True)
class Comparison:
    """One metric on the test split: unsteered vs steered, with the paired interval of the difference."""

    unsteered: float
    steered: float
    delta: float
    delta_ci: tuple[float, float]
    ci_level: float
    n_test: int

    def to_json(self) -> dict[str, Any]:
        return {"unsteered": self.unsteered, "steered": self.steered, "delta": self.delta,
                "delta_ci": list(self.delta_ci), "ci_level": self.ci_level, "n_test": self.n_test}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Comparison:
        if not isinstance(data["delta_ci"], list) or len(data["delta_ci"]) != 2:
            raise ValueError(f"metric 'delta_ci' must be a list of two numbers, got {data['delta_ci']!r}")
        low, high = data["delta_ci"]
        return cls(_finite(data, "unsteered"), _finite(data, "steered"), _finite(data, "delta"),
                   (_finite({"delta_ci[0]": low}, "delta_ci[0]"), _finite({"delta_ci[1]": high}, "delta_ci[1]")),
                   _finite(data, "ci_level"), int(data["n_test"]))


@dataclass(frozen=True)
class Metrics:
    """The gated metric with its interval, the 5-shot ICL score and the other metrics' comparisons."""

    gated: Comparison
    metric: str = "accuracy"
    icl: float | None = None  # the 5-shot (in-context) score on the same test items
    recovery: float | None = None  # steered / icl
    secondary: dict[str, Comparison] = field(default_factory=dict)

    @property
    def unsteered(self) -> float:
        return self.gated.unsteered

    @property
    def steered(self) -> float:
        return self.gated.steered

    @property
    def delta(self) -> float:
        return self.gated.delta

    @property
    def delta_ci(self) -> tuple[float, float]:
        return self.gated.delta_ci

    @property
    def n_test(self) -> int:
        return self.gated.n_test

    def to_json(self) -> dict[str, Any]:
        out = self.gated.to_json()
        if self.metric != "accuracy":
            out["metric"] = self.metric
        if self.icl is not None:
            out["icl"] = self.icl
            out["recovery"] = self.recovery
        if self.secondary:
            out["secondary"] = {name: c.to_json() for name, c in self.secondary.items()}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Metrics:
        return cls(
            gated=Comparison.from_json(data), metric=data.get("metric", "accuracy"),
            icl=None if data.get("icl") is None else _finite(data, "icl"),
            recovery=None if data.get("recovery") is None else _finite(data, "recovery"),
            secondary={k: Comparison.from_json(v) for k, v in data.get("secondary", {}).items()},
        )


@dataclass(frozen=True)
class Outcomes:
    """Per test item: its text and the unsteered, steered and ICL outcomes (0/1 or graded)."""

    items: tuple[str, ...]
    unsteered: tuple[float, ...]
    steered: tuple[float, ...]
    icl: tuple[float, ...] | None = None
    secondary: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": list(self.items), "unsteered": list(self.unsteered),
                               "steered": list(self.steered), "icl": None if self.icl is None else list(self.icl)}
        for name, (unsteered, steered) in self.secondary.items():
            out[f"{name}_unsteered"], out[f"{name}_steered"] = list(unsteered), list(steered)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcomes:
        names = sorted({k[: -len("_unsteered")] for k in data if k.endswith("_unsteered")})
        return cls(
            items=tuple(data["items"]), unsteered=tuple(data["unsteered"]), steered=tuple(data["steered"]),
            icl=None if data.get("icl") is None else tuple(data["icl"]),
            secondary={n: (tuple(data[f"{n}_unsteered"]), tuple(data[f"{n}_steered"])) for n in names},
        )


@dataclass(frozen=True)
class TaskData:
    """Which task data a result was computed on."""

    source: str
    sha256: str
    items: int


@dataclass(frozen=True)
class Provenance:
    """Where a result came from: model, code, data and seed."""

    fingerprint: str
    model_source: dict[str, Any]
    adapter: dict[str, Any]
    versions: dict[str, str]
    task_data: TaskData
    seed: int
    counts: dict[str, int]
    settings: dict[str, Any]
    device: str = "cpu"  # the device type the numbers were computed on (cpu, cuda, mps)
    dtype: str = "float32"  # the weight dtype


@dataclass(frozen=True)
class Replay:
    """The accepted vector (from the baseline's safetensors) applied to this run's model at the accepted setting."""

    vector_sha256: str
    setting: dict[str, Any]  # the accepted chosen setting it was applied at
    accepted: float  # the accepted steered score
    score: float = 0.0  # the stored vector's score on this model (test split)
    steered: tuple[float, ...] = ()  # its per-item outcomes
    error: str = ""  # why it could not be applied (then score and steered mean nothing)

    def to_json(self) -> dict[str, Any]:
        return {"vector_sha256": self.vector_sha256, "setting": self.setting, "accepted": self.accepted,
                "score": self.score, "steered": list(self.steered), "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Replay:
        return cls(str(data["vector_sha256"]), dict(data["setting"]), float(data["accepted"]), float(data["score"]),
                   tuple(data["steered"]), str(data.get("error", "")))


@dataclass(frozen=True)
class CaseResult:
    """Everything one run of a case measured. Built once; judging never changes it."""

    id: str
    model: str
    method: str
    task: str
    variant: str
    metrics: Metrics
    chosen: dict[str, Any]
    curves: dict[str, list[Any]]
    outcomes: Outcomes
    provenance: Provenance
    diagnostics: dict[str, Any]
    timing_s: dict[str, float] = field(default_factory=dict)  # run only
    vector_file: str | None = None  # run only: the staged accepted vector (safetensors)
    computed_at: str | None = None  # run only: when the numbers were computed (UTC, ISO 8601)
    reused: bool = False  # run only: judged from the result stored under the same inputs
    replay: Replay | None = None  # run only: the accepted vector on this model (when the model changed)

    def to_baseline(self) -> dict[str, Any]:
        """The stored reference: the kept fields only, in the baseline file layout."""
        p = self.provenance
        out: dict[str, Any] = {
            "schema": SCHEMA,
            "id": self.id, "model": self.model, "method": self.method, "task": self.task,
            "metrics": self.metrics.to_json(), "chosen": self.chosen, "curves": self.curves,
            "counts": p.counts, "seed": p.seed,
            "task_data": {"source": p.task_data.source, "sha256": p.task_data.sha256, "items": p.task_data.items},
            "fingerprint": p.fingerprint, "model_source": p.model_source, "adapter": p.adapter,
            "settings": p.settings, "versions": p.versions, "device": p.device, "dtype": p.dtype,
            "per_item": self.outcomes.to_json(),
            "diagnostics": self.diagnostics,
        }
        if self.variant:
            out["variant"] = self.variant
        return out

    def to_json(self) -> dict[str, Any]:
        """The baseline fields plus the run-only ones (for reports and the xdist channel)."""
        return {**self.to_baseline(), "timing_s": self.timing_s, "vector_file": self.vector_file,
                "computed_at": self.computed_at, "reused": self.reused,
                "replay": None if self.replay is None else self.replay.to_json()}

    @classmethod
    def from_baseline(cls, data: dict[str, Any]) -> CaseResult:
        """Read a baseline (any layout written so far) or a `to_json` payload; KeyError/TypeError/ValueError if malformed."""
        task = data["task_data"]
        provenance = Provenance(
            fingerprint=str(data["fingerprint"]), model_source=dict(data.get("model_source", {})),
            adapter=dict(data.get("adapter", {})), versions=dict(data.get("versions", {})),
            task_data=TaskData(str(task["source"]), str(task["sha256"]), int(task["items"])),
            seed=int(data["seed"]), counts=dict(data.get("counts", {})), settings=dict(data.get("settings", {})),
            device=str(data.get("device", "cpu")), dtype=str(data.get("dtype", "float32")),  # baselines before 2026-11-25: CPU float32
        )
        return cls(
            id=data["id"], model=data["model"], method=data["method"], task=data["task"],
            variant=data.get("variant", ""), metrics=Metrics.from_json(data["metrics"]), chosen=dict(data["chosen"]),
            curves=dict(data.get("curves", {})), outcomes=Outcomes.from_json(data["per_item"]), provenance=provenance,
            diagnostics=dict(data.get("diagnostics", {})), timing_s=dict(data.get("timing_s", {})),
            vector_file=data.get("vector_file"), computed_at=data.get("computed_at"), reused=bool(data.get("reused")),
            replay=None if data.get("replay") is None else Replay.from_json(data["replay"]),
        )

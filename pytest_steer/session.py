"""The per-process steering session: resolves options, keeps models loaded, runs and judges cases.

pytest hooks stay thin and delegate here; this module knows nothing of pytest items.
"""

from __future__ import annotations

import platform
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pytest_steer import __version__
from pytest_steer.cases import Case, task_slot
from pytest_steer.methods import METHODS
from pytest_steer.methods.base import Progress, RunContext
from pytest_steer.models.loader import ModelHandle, ModelSpec, load_model
from pytest_steer.settings import settings_dict
from pytest_steer.store import BaselineStore, VectorCache
from pytest_steer.verdict import Gate, Verdict, judge, metrics_from_outcomes


class BaselineMissing(Exception):
    """No stored baseline for a case; the message holds the command that creates it."""


class SteerFailure(AssertionError):
    """The case ran and did not meet its gate."""


class SteerRegression(AssertionError):
    """The case fell below its stored baseline: a failure even where failing the gate is expected."""


@dataclass(frozen=True)
class SteerOptions:
    """Options resolved from the command line (which wins) and ini."""

    cache_dir: Path
    baseline_dir: Path
    update: bool
    threshold: float
    tolerance: float
    min_recovery: float | None
    report_path: Path | None
    max_models: int = 1


def versions() -> dict[str, str]:
    import numpy
    import transformers

    return {
        "pytest_steer": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


@dataclass
class SteerSession:
    """Runs cases in this process; models stay loaded while consecutive cases use them."""

    options: SteerOptions
    progress: Progress | None = None
    _models: OrderedDict[ModelSpec, ModelHandle] = field(default_factory=OrderedDict)
    load_counts: dict[str, int] = field(default_factory=dict)
    _results: dict[Case, dict[str, Any]] = field(default_factory=dict)

    @property
    def baselines(self) -> BaselineStore:
        return BaselineStore(self.options.baseline_dir)

    def model(self, spec: ModelSpec) -> ModelHandle:
        """The loaded model for `spec`, loading it (and evicting the oldest) if needed."""
        if spec in self._models:
            self._models.move_to_end(spec)
            return self._models[spec]
        while len(self._models) >= self.options.max_models:
            self._models.popitem(last=False)
        handle = load_model(spec, self.options.cache_dir, self.progress)
        self._models[spec] = handle
        self.load_counts[spec.name] = self.load_counts.get(spec.name, 0) + 1
        return handle

    def gate(self, case: Case) -> Gate:
        o = case.options
        return Gate(
            threshold=self.options.threshold if o.threshold is None else o.threshold,
            tolerance=self.options.tolerance if o.tolerance is None else o.tolerance,
            min_recovery=self.options.min_recovery if o.min_recovery is None else o.min_recovery,
            gate=o.gate,
        )

    def result(self, case: Case) -> dict[str, Any]:
        """The case's record, computed once per process (the suite and user tests share it)."""
        if case not in self._results:
            self._results[case] = self.run_case(case)
        return self._results[case]

    def run_case(self, case: Case) -> dict[str, Any]:
        """Run one case end to end and return its record (JSON-serialisable, vectors separate)."""
        started = time.perf_counter()
        method = METHODS[case.method]
        o = case.options
        task = method.prepare(case.task, case.task_path, o.n_dev, o.n_test, o.seed)
        handle = self.model(case.model)
        loaded = time.perf_counter()
        context = RunContext(cache=VectorCache(self.options.cache_dir / "vectors"), seed=o.seed, progress=self.progress)
        torch.manual_seed(o.seed)
        outcome = method.run(handle, task.data, task.splits, case.settings, context)
        metrics = metrics_from_outcomes(outcome.unsteered, outcome.steered, outcome.ceiling, o.seed)
        if outcome.metric != "accuracy":
            metrics["metric"] = outcome.metric
        if outcome.secondary:
            metrics["secondary"] = {
                name: metrics_from_outcomes(base, steered, None, o.seed) for name, (base, steered) in outcome.secondary.items()
            }
        gate = self.gate(case)
        record: dict[str, Any] = {
            "id": case.id,
            "model": case.model.name,
            "method": case.method,
            "task": case.task,
            **({"variant": case.variant} if case.variant else {}),
            "metrics": metrics,
            "chosen": outcome.chosen,
            "curves": outcome.curves,
            "counts": task.counts,
            "seed": o.seed,
            "task_data": {"source": task.source, "sha256": task.sha256, "items": task.items},
            "fingerprint": handle.fingerprint,
            "model_source": case.model.describe(),
            "adapter": handle.adapter.describe(),
            "settings": settings_dict(case.settings),
            "gate": {"threshold": gate.threshold, "tolerance": gate.tolerance, "min_recovery": gate.min_recovery, "gate": gate.gate},
            "expect": case.options.expect,
            "versions": versions(),
            "per_item": {
                "items": outcome.test_items,
                "unsteered": per_item_values(outcome.unsteered),
                "steered": per_item_values(outcome.steered),
                "icl": None if outcome.ceiling is None else per_item_values(outcome.ceiling),
                **{f"{name}_{side}": per_item_values(values) for name, pair in outcome.secondary.items()
                   for side, values in zip(("unsteered", "steered"), pair)},
            },
            "diagnostics": outcome.diagnostics,
            "timing_s": {"model": round(loaded - started, 2), "method": round(time.perf_counter() - loaded, 2)},
            "_vectors": {
                name: {"shape": list(t.shape), "data": t.reshape(-1).tolist()} for name, t in outcome.vectors.items()
            },
            "_vector_metadata": outcome.vector_metadata,
        }
        return record

    def verdict(self, case: Case, record: dict[str, Any], nodeid: str) -> Verdict:
        """Judge a record against its gate and stored baseline; BaselineMissing if there is none."""
        stored = self.baselines.load(case.model.name, case.method, case.slot)
        if stored is None and not self.options.update:
            path = self.baselines.json_path(case.model.name, case.method, case.slot)
            raise BaselineMissing(
                f"no baseline for {case.id} at {path}. Create it with:\n"
                f"    pytest '{nodeid}' --steer-update"
            )
        verdict = judge(record["metrics"], self.gate(case), stored, self.options.update)
        record["baseline"] = {
            "status": verdict.baseline,
            "stored_steered": None if stored is None else stored["metrics"].get("steered"),
            "stored_fingerprint": None if stored is None else stored.get("fingerprint"),
            "model_changed": stored is not None and stored.get("fingerprint") != record["fingerprint"],
        }
        return verdict


# Run-specific fields, and the gate and expectation: those live in the case file alone, so a
# baseline never disagrees with the case file about them.
BASELINE_DROP = ("status", "timing_s", "baseline", "_vectors", "_vector_metadata", "gate", "expect")


def write_baseline(store: BaselineStore, record: dict[str, Any]) -> list[Path]:
    """Store a record (minus run-specific fields) and its vector(s) as the accepted baseline."""
    vectors = {
        name: torch.tensor(v["data"], dtype=torch.float32).reshape(v["shape"]) for name, v in record.get("_vectors", {}).items()
    }
    clean = {k: v for k, v in record.items() if k not in BASELINE_DROP}
    meta = {
        **record.get("_vector_metadata", {}),
        "case": record["id"],
        "fingerprint": record["fingerprint"],
        "method": record["method"],
        "task_sha256": record["task_data"]["sha256"],
        "plugin_version": __version__,
    }
    return store.write(record["model"], record["method"], task_slot(record["task"], record.get("variant", "")), clean, vectors, meta)


def per_item_values(values: np.ndarray) -> list[int] | list[float]:
    """0/1 outcomes as ints (as the word-task baselines store them), graded ones as rounded floats."""
    if np.isin(values, (0, 1)).all():
        return values.astype(int).tolist()
    return [round(float(v), 6) for v in values]


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}

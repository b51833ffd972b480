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

import torch

from pytest_steer import __version__
from pytest_steer.cases import Case
from pytest_steer.methods import METHODS
from pytest_steer.methods.base import Progress, RunContext
from pytest_steer.models.loader import ModelHandle, ModelSpec, load_model
from pytest_steer.settings import settings_dict
from pytest_steer.store import BaselineStore, VectorCache
from pytest_steer.tasks import load_task, split_task
from pytest_steer.verdict import Gate, Verdict, judge, metrics_from_outcomes


class BaselineMissing(Exception):
    """No stored baseline for a case; the message holds the command that creates it."""


class SteerFailure(AssertionError):
    """The case ran and did not meet its gate."""


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
        task = load_task(case.task, case.task_path)
        splits = split_task(task, case.options.n_dev, case.options.n_test, case.options.seed)
        handle = self.model(case.model)
        loaded = time.perf_counter()
        context = RunContext(cache=VectorCache(self.options.cache_dir / "vectors"), seed=case.options.seed, progress=self.progress)
        torch.manual_seed(case.options.seed)
        outcome = METHODS[case.method].run(handle, task, splits, case.settings, context)
        metrics = metrics_from_outcomes(outcome.unsteered, outcome.steered, outcome.ceiling, case.options.seed)
        gate = self.gate(case)
        record: dict[str, Any] = {
            "id": case.id,
            "model": case.model.name,
            "method": case.method,
            "task": case.task,
            "metrics": metrics,
            "chosen": outcome.chosen,
            "curves": outcome.curves,
            "counts": {"demos": len(splits.demos), "dev": len(splits.dev), "test": len(splits.test)},
            "seed": case.options.seed,
            "task_data": {"source": task.source, "sha256": task.data_hash(), "items": len(task.pairs)},
            "fingerprint": handle.fingerprint,
            "model_source": case.model.describe(),
            "adapter": handle.adapter.describe(),
            "settings": settings_dict(case.settings),
            "gate": {"threshold": gate.threshold, "tolerance": gate.tolerance, "min_recovery": gate.min_recovery, "gate": gate.gate},
            "expect": case.options.expect,
            "versions": versions(),
            "per_item": {
                "items": outcome.test_items,
                "unsteered": outcome.unsteered.astype(int).tolist(),
                "steered": outcome.steered.astype(int).tolist(),
                "icl": None if outcome.ceiling is None else outcome.ceiling.astype(int).tolist(),
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
        stored = self.baselines.load(case.model.name, case.method, case.task)
        if stored is None and not self.options.update:
            path = self.baselines.json_path(case.model.name, case.method, case.task)
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


BASELINE_DROP = ("status", "timing_s", "baseline", "_vectors", "_vector_metadata")


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
    return store.write(record["model"], record["method"], record["task"], clean, vectors, meta)


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if not k.startswith("_")}

"""The per-process steering session: keeps a model loaded, runs cases and judges them.

pytest hooks stay thin and delegate here; this module knows nothing of pytest items. It
imports torch, so the plugin imports it only when a case runs or a steering fixture is used.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import platform
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout

from pytest_steer import __version__
from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.cases.casefile import Case, read_task
from pytest_steer.run.options import SteerOptions
from pytest_steer.methods import load_method, methods
from pytest_steer.methods.base import Control, MethodOutcome, Progress, RunContext
from pytest_steer.methods.contract import Batched, Decides, quick, scores_sequentially
from pytest_steer.judge.sequential import decides, rule_key
from pytest_steer.report.summary import NO_VECTOR
from pytest_steer.models.loader import ModelHandle, Resolved, load_model, resolve
from pytest_steer.run.device import Placement, available, physical_gpus, resolve_device, resolve_dtype, with_backoff, worker_gpus, worker_index
from pytest_steer.storage.files import StoreError, atomic_write_json, file_sha256, shared_dir
from pytest_steer.methods.search import ReplayError
from pytest_steer.models.spec import ModelSpec
from pytest_steer.record import CaseResult, Outcomes, Provenance, Replay, SideEffect, TaskData
from pytest_steer.storage.results import ResultInputs, ResultCache, now
from pytest_steer.cases.settings import settings_dict
from pytest_steer.storage.tensors import VectorCache, cache_key, read_tensors, write_tensors
from pytest_steer.tasks import load_task, sample_items
from pytest_steer.judge.verdict import (
    BaselineMissing, Gate, Verdict, case_tolerance, comparisons, data_mismatch, gate_reasons, judge,
    metrics_from_outcomes, resolve_tolerance, score_changes,
)


def versions() -> dict[str, str]:
    import transformers

    return {
        "pytest_steer": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@dataclass
class SteerSession:
    """Runs cases in this process; the model stays loaded while consecutive cases use it."""

    options: SteerOptions
    progress: Progress | None = None
    load_counts: dict[str, int] = field(default_factory=dict)
    _loaded: tuple[ModelSpec, ModelHandle] | None = None
    _results: dict[Case, CaseResult] = field(default_factory=dict)
    _resolved: dict[ModelSpec, Resolved] = field(default_factory=dict)
    _placements: dict[ModelSpec, Placement] = field(default_factory=dict)
    _cache: ResultCache | None = None
    selected: list[Case] = field(default_factory=list)  # the cases this process may run (for shared work)
    run_id: str | None = None  # scores shared between cases live under <cache>/shared/<run_id> for this run only
    _full_after_quick: dict[Case, str] = field(default_factory=dict)  # --steer-quick: why a case ran in full
    process: str = "master"  # this process in the run (an xdist worker id), for the record of who scored what

    @property
    def results(self) -> ResultCache:
        """Computed results keyed by their inputs."""
        if self._cache is None:
            self._cache = ResultCache(self.options.cache_dir / "results")
        return self._cache

    def resolve(self, spec: ModelSpec) -> Resolved:
        """The model's location and fingerprint in its dtype (fetched or converted if needed, not loaded)."""
        if spec not in self._resolved:
            placed = self.placement(spec)
            self._resolved[spec] = resolve(spec, self.options.cache_dir, self.progress, placed.dtype, placed.device)
        return self._resolved[spec]

    def placement(self, spec: ModelSpec) -> Placement:
        """Where `spec` runs: its own device/dtype or the run's; under xdist, this worker's GPU(s)."""
        if spec not in self._placements:
            self._placements[spec] = place(spec, self.options, os.environ.get("PYTEST_XDIST_WORKER", ""))
        return self._placements[spec]

    @property
    def baselines(self) -> BaselineStore:
        return BaselineStore(self.options.baseline_dir)

    def model(self, spec: ModelSpec) -> ModelHandle:
        """The loaded model for `spec`; loading another model releases the previous one first."""
        if self._loaded is not None and self._loaded[0] == spec:
            return self._loaded[1]
        self.release()
        handle = load_model(spec, self.options.cache_dir, self.progress, self.resolve(spec), self.placement(spec))
        self._loaded = (spec, handle)
        self.load_counts[spec.name] = self.load_counts.get(spec.name, 0) + 1
        return handle

    def release(self) -> None:
        """Drop the loaded model and return its device memory before another loads."""
        if self._loaded is None:
            return
        self._loaded = None
        _empty_cache()

    def result(self, case: Case) -> CaseResult:
        """The case's result, computed once per process (the suite and user tests share it)."""
        if case not in self._results:
            group = self.siblings(case)
            if len(group) == 1 or self._in_parts(case):  # parts: every process on the group scores parts of it
                self._results.update(self._run(group))
            else:
                # another worker (xdist without loadgroup) may be running the same group: wait for it,
                # then find its results stored instead of computing them twice
                try:
                    self.results.root.mkdir(parents=True, exist_ok=True)
                    lock: Any = FileLock(str(self.results.root / f".{_work_hash(case)}.lock"))
                    lock.acquire()
                except OSError:  # a read-only cache: nothing is stored there to wait for
                    lock = None
                try:
                    self._results.update(self._run(group))
                finally:
                    if lock is not None:
                        lock.release()
        return self._results[case]

    def siblings(self, case: Case) -> list[Case]:
        """`case` and the selected cases that can share its work (same model, method, task data and
        test items, other settings) when its method runs several settings in one pass."""
        if not methods()[case.method].shares_work:
            return [case]
        same = _work_key(case)
        return [case] + [c for c in self.selected if c != case and c not in self._results and _work_key(c) == same]

    def run_case(self, case: Case) -> CaseResult:
        """Run one case end to end (task, model, method, then the typed result), or reuse the result
        stored under exactly the same inputs without loading the model."""
        return self._run([case])[case]

    def _run(self, cases: list[Case]) -> dict[Case, CaseResult]:
        """Run cases that share model, method, task and split; several at once where the method can."""
        started = time.perf_counter()
        first = cases[0]
        method = load_method(first.method)
        o = first.options
        task = load_task(first.task, first.task_path)
        splits, counts = method.prepare(task, o.n_dev, o.n_test, o.seed)
        out: dict[Case, CaseResult] = {}
        todo: list[tuple[Case, ResultInputs]] = []
        task_sha256 = task.data_hash()
        replays: dict[Case, Accepted] = {}
        looks: dict[Case, Decides] = {}
        for case in cases:
            accepted = self._accepted_vector(case)
            if accepted is not None:
                replays[case] = accepted
            inputs = self._inputs(case, task_sha256, counts, accepted)
            if self.options.sequential and not self.options.update and scores_sequentially(method):
                looks[case], key = self._looks(case, counts)
                inputs = replace(inputs, sequential=key)
            stored = None if self.options.rerun else self.results.get(inputs)
            if stored is not None:  # the same weights from another source reuse it: say where this run's came from
                out[case] = replace(stored, provenance=replace(stored.provenance, model_source=inputs.model_source))
            else:
                todo.append((case, inputs))
        if not todo:
            return out
        context = RunContext(cache=VectorCache(self.options.cache_dir / "vectors", methods()[first.method].code()),
                             seed=o.seed, progress=self.progress,
                             shared=None if self.run_id is None else VectorCache(shared_dir(self.options.cache_dir, self.run_id)),
                             control=_control(first))
        if looks:
            context.sequential = [looks[case] for case, _ in todo]
        if self.options.quick and not self.options.update and quick(method):
            todo = [(case, inputs) for case, inputs in todo if not self._quick(method, case, inputs, task, splits, context, out)]
            if not todo:
                return out
            started = time.perf_counter()  # the full protocol's own time
        handle = self.model(first.model)
        loaded = time.perf_counter()
        torch.manual_seed(o.seed)
        batch = min((case.settings.batch_size if isinstance(case.settings, Batched) else 0 for case, _ in todo), default=0)

        def run(size: int) -> list[MethodOutcome]:
            chosen = [_batched(case.settings, size) for case, _ in todo]
            if self._in_parts(first):
                return self._parts(method, handle, task, splits, chosen, [inputs.key() for _, inputs in todo],
                                   _work_hash(first), context)
            if len(todo) == 1:
                return [method.run(handle, task, splits, chosen[0], context)]
            return method.run_many(handle, task, splits, chosen, context)  # type: ignore[attr-defined,no-any-return]

        what = ", ".join(case.id for case, _ in todo) + f" on {self.placement(first.model).describe()}"
        outcomes, fitted = with_backoff(run, batch, what, _peak_gib, _empty_cache) if batch else (run(0), 0)
        if fitted and fitted < batch:  # numbers do not depend on the batch; the record says it shrank
            outcomes = [replace(o, diagnostics={**o.diagnostics, "batch_size_after_out_of_memory": fitted}) for o in outcomes]
        timing = {"model": round(loaded - started, 2), "method": round(time.perf_counter() - loaded, 2)}
        if len(todo) > 1:
            timing["shared_by"] = float(len(todo))  # one pass for all of them: the time is theirs together
        for (case, inputs), outcome in zip(todo, outcomes):
            replayed = None
            if case in replays:
                replayed = self._replay(method, handle, splits, case, replays[case])
                if case.options.gate_vector == "replay" and not replayed.error:
                    outcome = _gate_on_replay(outcome, replayed, replays[case])
            out[case] = replace(self._record(case, handle, task, inputs, outcome, {**timing, **outcome.phases}),
                                replay=replayed)
            self.results.put(inputs, out[case])
        return out

    def _in_parts(self, case: Case) -> bool:
        """The case's split is scored in parts that several processes can share (DoLa, more than PART_ROWS items)."""
        return (self.run_id is not None and not self.options.sequential and case.options.n_test > PART_ROWS
                and methods()[case.method].parts)

    def _parts(self, method: Any, handle: ModelHandle, task: Any, splits: Any, settings: list[Any], keys: list[str],
               work: str, context: RunContext) -> list[MethodOutcome]:
        """Score the split in parts of PART_ROWS items, each taken by whichever process running one of these cases
        locks it first (under xdist both workers share a long DoLa group to its end), and join them: the outcomes
        are those of one pass over the whole split. Parts live in this run's shared folder."""
        folder = shared_dir(self.options.cache_dir, str(self.run_id)) / "parts"
        chunks = [list(range(k, min(k + PART_ROWS, len(splits)))) for k in range(0, len(splits), PART_ROWS)]
        got: dict[int, list[dict[str, Any]]] = {}

        def take(k: int, wait: bool) -> bool:
            stored = _stored_parts(folder, keys, k, chunks[k])
            if stored is not None:
                got[k] = stored
                return True
            try:
                folder.mkdir(parents=True, exist_ok=True)
                lock: Any = FileLock(str(folder / f".{work}-{k}.lock"))
                lock.acquire(timeout=-1 if wait else 0)
            except Timeout:
                return False  # another process is scoring it
            except OSError:
                lock = None  # a read-only cache: score it here
            try:
                got[k] = _stored_parts(folder, keys, k, chunks[k]) or self._score_part(
                    method, handle, task, splits, settings, chunks[k], folder, keys, k, context)
            finally:
                if lock is not None:
                    lock.release()
            return True

        waiting = [k for k in range(len(chunks)) if not take(k, wait=False)]
        for k in waiting:
            take(k, wait=True)
        outcomes = method.combine(handle, task, splits, settings,
                                  [[got[k][v] for k in range(len(chunks))] for v in range(len(settings))], context)
        by = Counter(str(got[k][0].get("by", "")) for k in range(len(chunks)))
        return [replace(o, diagnostics={**o.diagnostics, "parts": {"count": len(chunks), "by": dict(sorted(by.items()))}})
                for o in outcomes]

    def _score_part(self, method: Any, handle: ModelHandle, task: Any, splits: Any, settings: list[Any], rows: list[int],
                    folder: Path, keys: list[str], k: int, context: RunContext) -> list[dict[str, Any]]:
        with torch.inference_mode():
            parts = method.run_part(handle, task, splits, settings, rows, context)
        for key, part in zip(keys, parts):
            part["by"] = self.process  # which process scored it, for the record
            try:
                atomic_write_json(folder / key / f"{k}.json", part)
            except OSError:
                pass  # a read-only cache: the part stays in this process
        return parts

    def _accepted_vector(self, case: Case) -> Accepted | None:
        """The accepted vector to replay on this run's model: when the model differs from the one the
        baseline was accepted for, or when the case gates on the replay. None for methods without vectors."""
        stored = self._stored_baseline(case)
        if stored is None:
            return None
        changed = stored.provenance.fingerprint != self.resolve(case.model).fingerprint
        if not changed and case.options.gate_vector != "replay":
            return None
        return self._stored_vector(case, stored)

    def _looks(self, case: Case, counts: dict[str, int]) -> tuple[Decides, str]:
        """`--steer-sequential`: the case's stopping look and what it depends on (for the result's key)."""
        stored = self._baseline(case)
        n = counts.get("test", 0)
        gate = self.gate(case)
        return decides(gate, n, stored), rule_key(gate, n, stored)

    def _baseline(self, case: Case) -> CaseResult | None:
        """The case's accepted result; None when there is none or it cannot be read (judging says why)."""
        try:
            return self.baselines.load(case.model.name, case.method, case.slot)
        except (StoreError, OSError):
            return None

    def _stored_baseline(self, case: Case) -> CaseResult | None:
        """The case's accepted result when its method stores a vector and the vector file is there."""
        if not methods()[case.method].replays:
            return None
        stored = self._baseline(case)
        if stored is None or not self.baselines.vector_path(case.model.name, case.method, case.slot).is_file():
            return None
        return stored

    def _stored_vector(self, case: Case, stored: CaseResult) -> Accepted:
        path = self.baselines.vector_path(case.model.name, case.method, case.slot)
        tensors, metadata = read_tensors(path)  # read once: its checksum keys the result, its tensors are replayed
        return Accepted(metadata["content_sha256"], tensors, stored)

    def _quick(self, method: Any, case: Case, inputs: ResultInputs, task: Any, splits: Any, context: RunContext,
               out: dict[Case, CaseResult]) -> bool:
        """`--steer-quick`: judge `case` by its accepted vector at the accepted setting on the test items. True when
        that settles it (into `out`); False when the full protocol must run: no stored vector, a vector that does not
        fit, items that cannot be paired, or a drop the regression rule flags (or leaves to the run's correction)."""
        stored = self._stored_baseline(case)
        if stored is None:
            self._full_after_quick[case] = NO_VECTOR
            return False
        accepted = self._stored_vector(case, stored)
        keyed = replace(inputs, quick=True, replay=accepted.sha256)
        result = None if self.options.rerun else self.results.get(keyed)
        if result is None:
            handle = self.model(case.model)
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    outcome = method.quick(handle, splits, case.settings, accepted.tensors, stored.chosen, context)
            except ReplayError as exc:
                self._full_after_quick[case] = f"the accepted vector cannot be applied: {exc}"
                return False
            outcome.diagnostics["quick"] = True
            result = self._record(case, handle, task, keyed, outcome,
                                  {"method": round(time.perf_counter() - started, 2), **outcome.phases})
            result = replace(result, replay=replace(_replay_record(accepted), score=result.metrics.steered,
                                                    steered=result.outcomes.steered))
            self.results.put(keyed, result)
        else:
            result = replace(result, provenance=replace(result.provenance, model_source=inputs.model_source))
        why = quick_regressions(result, stored, self.gate(case))
        if why:
            self._full_after_quick[case] = why
            return False
        out[case] = result
        return True

    def _replay(self, method: Any, handle: ModelHandle, splits: Any, case: Case, accepted: Accepted) -> Replay:
        """The accepted vector on this model at the accepted setting; a vector that does not fit is recorded, not raised."""
        base = _replay_record(accepted)
        try:
            with torch.inference_mode():
                steered = method.replay(handle, splits, case.settings, accepted.tensors, accepted.result.chosen)
        except ReplayError as exc:
            return replace(base, error=str(exc))
        return replace(base, score=float(np.mean(steered)), steered=per_item_values(steered))

    def _inputs(self, case: Case, task_sha256: str, counts: dict[str, int], accepted: Accepted | None) -> ResultInputs:
        override = case.model.override
        placed = self.placement(case.model)
        return ResultInputs(
            case=case.id, model_source=case.model.describe(), fingerprint=self.resolve(case.model).fingerprint,
            device=device_type(placed.device), dtype=placed.dtype, method=case.method,
            task_sha256=task_sha256, counts=counts, seed=case.options.seed, settings=_portable(case),
            versions=versions(), adapter_override=None if override is None else asdict(override),
            gate_vector=case.options.gate_vector, replay=None if accepted is None else accepted.sha256,
            source=methods()[case.method].code(), control=_control_key(case), files=_files(case.settings),
        )

    def _record(self, case: Case, handle: ModelHandle, task: Any, inputs: ResultInputs, outcome: MethodOutcome,
                timing: dict[str, float]) -> CaseResult:
        """The typed result; its provenance is the inputs it was computed from (plus the adapter)."""
        o = case.options
        provenance = Provenance(
            fingerprint=inputs.fingerprint, model_source=inputs.model_source, adapter=handle.adapter.describe(),
            versions=inputs.versions, task_data=TaskData(task.source, inputs.task_sha256, len(task.items)),
            seed=inputs.seed, counts=inputs.counts, settings=inputs.settings, device=inputs.device, dtype=inputs.dtype,
        )
        return CaseResult(
            id=case.id, model=case.model.name, method=case.method, task=case.task, variant=case.variant,
            metrics=metrics_from_outcomes(outcome.unsteered, outcome.steered, outcome.icl, o.seed, outcome.metric,
                                          outcome.secondary),
            chosen=outcome.chosen, curves=outcome.curves, outcomes=_outcomes(outcome), provenance=provenance,
            diagnostics=outcome.diagnostics, timing_s=dict(timing),
            vector_file=self._stage_vectors(case, provenance, outcome), computed_at=now(),
            side_effect=None if outcome.control is None else SideEffect(
                outcome.control.task, tuple(outcome.control.items), per_item_values(outcome.control.unsteered),
                per_item_values(outcome.control.steered)),
        )

    def _stage_vectors(self, case: Case, provenance: Provenance, outcome: MethodOutcome) -> str | None:
        """Write the accepted vector once, from the tensor, where `--steer-update` copies it from."""
        if not outcome.vectors:
            return None
        meta = {
            **outcome.vector_metadata, "case": case.id, "fingerprint": provenance.fingerprint, "method": case.method,
            "task_sha256": provenance.task_data.sha256, "plugin_version": __version__,
        }
        key = cache_key({"meta": meta, "settings": provenance.settings, "seed": provenance.seed})
        path = self.options.cache_dir / "accepted" / case.method / f"{key}.safetensors"
        try:
            write_tensors(path, outcome.vectors, meta)
        except OSError:  # a read-only cache: staged in this user's temporary folder instead (same machine, same run)
            path = Path(tempfile.gettempdir()) / f"pytest-steer-{os.getuid()}" / "accepted" / case.method / path.name
            write_tensors(path, outcome.vectors, meta)
        return str(path)

    def gate(self, case: Case) -> Gate:
        o = case.options
        return Gate(
            threshold=self.options.threshold if o.threshold is None else o.threshold,
            tolerance=case_tolerance(o.tolerance, self.options.tolerance),
            min_recovery=self.options.min_recovery if o.min_recovery is None else o.min_recovery,
            gate=o.gate, rule=self.options.regression, alpha=self.options.alpha, multiple=self.options.multiple,
            comparisons=comparisons(len(self.selected)), max_side_effect=o.max_side_effect,
        )

    def verdict(self, case: Case, result: CaseResult, nodeid: str) -> Verdict:
        """Judge a result against its gate and stored baseline; BaselineMissing if there is none."""
        stored = self.baselines.load(case.model.name, case.method, case.slot)
        if stored is None and not self.options.update:
            path = self.baselines.json_path(case.model.name, case.method, case.slot)
            raise BaselineMissing(
                f"no baseline for {case.id} at {path}. Create it with:\n"
                f"    pytest '{nodeid}' --steer-update"
            )
        verdict = judge(result, self.gate(case), stored, self.options.update,
                        candidate=case.model.name in self.options.candidates)
        if self.options.quick:
            verdict = replace(verdict, quick=quick_path(result, self._full_after_quick.get(case)))
        replayed = result.replay
        if case.options.gate_vector == "replay" and stored is not None and (replayed is None or replayed.error):
            # the gate is the accepted vector; when it cannot be applied, a fresh vector must not stand in for it
            path = self.baselines.vector_path(case.model.name, case.method, case.slot)
            why = f"cannot be applied: {replayed.error}" if replayed is not None else "is missing or was not replayed"
            verdict = replace(verdict, passed=False, reasons=(
                *verdict.reasons, f"gate_vector = 'replay': the accepted vector {path} {why}"))
        return verdict


def place(spec: ModelSpec, options: SteerOptions, worker_id: str) -> Placement:
    """The model's device (its own, else the run's; 'auto' and 'cuda' under xdist: this worker's GPU) and dtype."""
    requested = spec.device or options.device
    gpus, mps = available()
    where = f"[models.{spec.name}].device" if spec.device else "--steer-device"
    device = resolve_device(requested, gpus, mps, where)
    mine: list[int] = []
    k = worker_index(worker_id)
    if device.startswith("cuda") and requested in ("auto", "cuda") and k is not None:
        mine = worker_gpus(k, gpus, options.gpus_per_worker if spec.device_map else 1)
        device = f"cuda:{mine[0]}"
    dtype = resolve_dtype(spec.dtype or options.dtype, device, f"[models.{spec.name}].dtype" if spec.dtype else "--steer-dtype")
    physical = physical_gpus(mine, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return Placement(device, dtype, spec.device_map, tuple(mine), tuple(physical))


def quick_regressions(result: CaseResult, stored: CaseResult, gate: Gate) -> str:
    """Why a quick (replayed) result cannot settle its case: empty when it can.

    The replay settles a case only when the full protocol would very likely give the same verdict: it is paired
    item by item with the accepted result, it passes the gate (a replay below the threshold may be beaten by the
    full search), no score drops beyond the tolerance with p below alpha (a regression, or one the run's
    correction would rule on), and no score (the replay's steered, the unsteered, the 5-shot) is below the
    accepted one at all (the full gate judges the re-extracted vector, which may fall further than the accepted
    one does on a model that lost ground)."""
    if data_mismatch(result.provenance, stored.provenance):
        return "the accepted result's items, device or dtype differ from this run's"
    gate = resolve_tolerance(gate, result)
    changes = score_changes(result, stored, gate)
    if any(c.test == "" for c in changes):
        return "the replay cannot be paired with the accepted result item by item"
    flagged = [c for c in changes if c.regression or c.pending]
    if flagged:
        return "; ".join(f"{_whose(c.score)} regressed: {c.describe()}" for c in flagged)
    failed = gate_reasons(result.metrics, gate)
    if failed:
        return f"the replay does not pass the gate ({'; '.join(failed)}); the full search may"
    lower = [c for c in changes if c.after < c.before - 1e-12]
    if lower:
        # the full gate judges a vector extracted from this model: where the replay or the model's own scores lost
        # ground, the re-extracted vector may fall further than the accepted one does (measured: a damaged SmolLM2
        # whose 5-shot score fell kept the accepted task vector's score while the re-extracted one regressed)
        return "; ".join(f"{_whose(c.score)} lost ground ({c.describe()})" for c in lower) + \
            "; the full protocol judges the re-extracted vector"
    return ""


def _whose(score: str) -> str:
    return "the replay" if score == "steered" else f"the {score} score"


def quick_path(result: CaseResult, full_because: str | None) -> str:
    """How `--steer-quick` judged a result: 'replay', or why the full protocol ran."""
    if result.diagnostics.get("quick") is True:
        return "replay"
    return f"full: {full_because}" if full_because else "full"


def device_type(device: str) -> str:
    """'cuda:1' -> 'cuda': results of one device type are interchangeable."""
    return device.split(":")[0]


def _batched(settings: Any, size: int) -> Any:
    """The settings with a smaller batch (after an out-of-memory error); unchanged when it did not shrink."""
    if not isinstance(settings, Batched) or not size or settings.batch_size <= size:
        return settings
    return replace(settings, batch_size=size, max_rows=max(1, settings.max_rows * size // settings.batch_size))


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def _empty_cache() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class Accepted:
    """A case's accepted vector (its checksum and tensors) and the accepted result it belongs to."""

    sha256: str
    tensors: dict[str, torch.Tensor]
    result: CaseResult


def _replay_record(accepted: Accepted) -> Replay:
    """The record of replaying `accepted` (its checksum, the setting applied, the accepted score), not yet scored."""
    chosen = {k: v for k, v in accepted.result.chosen.items() if k != "relative_depth"}
    return Replay(accepted.sha256, chosen, accepted.result.metrics.steered)


def _gate_on_replay(outcome: MethodOutcome, replayed: Replay, accepted: Accepted) -> MethodOutcome:
    """The gated steered outcomes are the accepted vector's at the accepted setting (`gate_vector = "replay"`);
    the re-extracted choice stays in the diagnostics, for drift."""
    return replace(
        outcome, steered=np.asarray(replayed.steered, dtype=float), chosen=dict(accepted.result.chosen),
        vectors=accepted.tensors, diagnostics={**outcome.diagnostics, "extracted_chosen": outcome.chosen},
    )


def _control(case: Case) -> Control | None:
    """The case's side-effect control questions (the first `n_control` of a seeded draw), or None. The file is
    read once per version (`read_task`), not once per case."""
    if case.control_path is None:
        return None
    task = read_task(case.control_path.stem, case.control_path)
    rows = sample_items(task, case.options.n_control, case.options.seed)
    return Control(task.name, tuple(task.items[i] for i in rows))  # type: ignore[misc]


def _control_key(case: Case) -> str | None:
    control = _control(case)
    if control is None:
        return None
    return cache_key({"task": control.task, "items": [dataclasses.astuple(item) for item in control.items]})


def _portable(case: Case) -> dict[str, Any]:
    """The settings as recorded: a file they name (`vector`) relative to the case file's folder where it lies
    under it, so a baseline reads the same in every checkout (the file's content hash keys the result)."""
    settings = settings_dict(case.settings)
    path = settings.get("vector")
    if isinstance(path, str) and path:
        try:
            settings["vector"] = Path(path).relative_to(case.source.resolve().parent).as_posix()
        except ValueError:
            pass
    return settings


def _files(settings: Any) -> dict[str, str] | None:
    """The content hash of a file the settings name (`vector`), so an edited file is a new result."""
    path = getattr(settings, "vector", None)
    if not isinstance(path, str) or not path or not Path(path).is_file():
        return None
    return {"vector": file_sha256(Path(path))}


def _outcomes(outcome: MethodOutcome) -> Outcomes:
    return Outcomes(
        items=tuple(outcome.test_items), unsteered=per_item_values(outcome.unsteered),
        steered=per_item_values(outcome.steered), icl=None if outcome.icl is None else per_item_values(outcome.icl),
        secondary={n: (per_item_values(u), per_item_values(s)) for n, (u, s) in outcome.secondary.items()},
    )


def per_item_values(values: np.ndarray) -> tuple[float, ...]:
    """0/1 outcomes as ints (as the word-task baselines store them), graded ones as rounded floats."""
    if np.isin(values, (0, 1)).all():
        return tuple(values.astype(int).tolist())
    return tuple(round(float(v), 6) for v in values)


PART_ROWS = 8  # test items per part of a split scored in parts (a part is the unit two processes share)


def _stored_parts(folder: Path, keys: list[str], k: int, rows: list[int]) -> list[dict[str, Any]] | None:
    """Part k of every case (by its result key) as stored in this run, or None if any is missing or not of `rows`."""
    parts = []
    for key in keys:
        try:
            part = json.loads((folder / key / f"{k}.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(part, dict) or part.get("rows") != rows:
            return None
        parts.append(part)
    return parts


def _work_key(case: Case) -> tuple[Any, ...]:
    """What cases sharing one pass must have in common: the model, method, task, split and side-effect control."""
    o = case.options
    return case.model, case.method, case.task, case.task_path, o.n_dev, o.n_test, o.seed, case.control_path, o.n_control


def _work_hash(case: Case) -> str:
    return hashlib.sha256(repr(_work_key(case)).encode()).hexdigest()[:24]

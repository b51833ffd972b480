"""The layer-search skeleton shared by task and function vectors.

extract (cached) -> dev search over every intervention of the grid -> unsteered and
5-shot ICL scores on test -> the steered test score at the chosen intervention.
A method supplies only what differs: how its tensors are extracted, which
interventions it searches and how one is applied (`LayerSearch`'s abstract methods).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from pytest_steer.errors import SteerError
from pytest_steer.methods.base import MethodOutcome, Phases, RunContext
from pytest_steer.methods.control import control_outcome
from pytest_steer.methods.hooks import HookReport, Intervene, silent_layers
from pytest_steer.methods.scoring import TokenCounter, first_target_ids, score_interventions
from pytest_steer.models.loader import ModelHandle
from pytest_steer.cases.settings import SettingsError, settings_dict
from pytest_steer.storage.tensors import CacheOutcome
from pytest_steer.tasks import Pair, Splits, Task, require_kind, split_task
from pytest_steer.tasks.prompts import icl_prompts, target_text, zero_shot_prompt


@dataclass
class PromptSet:
    """Prompts with the first token of each target, as fed to the model."""

    prompts: list[str]
    targets: list[int]

    @classmethod
    def build(cls, handle: ModelHandle, prompts: list[str], pairs: Sequence[Pair]) -> PromptSet:
        return cls(prompts, first_target_ids(handle.tokenizer, prompts, [target_text(p) for p in pairs]))

    @classmethod
    def zero_shot(cls, handle: ModelHandle, pairs: Sequence[Pair]) -> PromptSet:
        return cls.build(handle, [zero_shot_prompt(p.input) for p in pairs], pairs)


@dataclass(frozen=True)
class Scoring:
    """How prompts are batched (never changes a number beyond float precision)."""

    batch_size: int
    max_rows: int
    reuse_prefix: bool

    def correct(
        self, handle: ModelHandle, data: PromptSet, n_interventions: int, intervene: Intervene | None, counter: TokenCounter,
        unchanged_blocks: Sequence[int] | None = None, progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Per-item correctness (n_items, n_interventions) of the target's first token."""
        result = score_interventions(
            handle, data.prompts, data.targets, n_interventions, intervene, batch_size=self.batch_size,
            max_rows=self.max_rows, counter=counter, reuse_prefix=self.reuse_prefix, unchanged_blocks=unchanged_blocks,
            logprobs=False,  # correctness reads the argmax alone
            progress=progress,
        )
        return result.correct(data.targets)


@dataclass
class UnsteeredScores:
    """Zero-shot outcomes on dev and test, and the 5-shot ICL outcomes on test."""

    dev: np.ndarray
    test: np.ndarray
    icl: np.ndarray
    shared: dict[str, bool] = field(default_factory=dict)  # test / icl: taken from another case of this run


def unsteered_scores(
    handle: ModelHandle, splits: Splits, dev: PromptSet, test: PromptSet, icl_shots: int, scoring: Scoring,
    counter: TokenCounter, context: RunContext,
) -> UnsteeredScores:
    test_correct, icl_correct, shared = test_scores(handle, splits, test, icl_shots, scoring, counter, context)
    return UnsteeredScores(dev=scoring.correct(handle, dev, 1, None, counter)[:, 0], test=test_correct, icl=icl_correct,
                           shared=shared)


def test_scores(
    handle: ModelHandle, splits: Splits, test: PromptSet, icl_shots: int, scoring: Scoring, counter: TokenCounter,
    context: RunContext,
) -> tuple[np.ndarray, np.ndarray, dict[str, bool]]:
    """Unsteered zero-shot and 5-shot ICL outcomes on test, and whether each was another case's of this run."""
    icl = PromptSet.build(handle, icl_prompts(splits.demos, splits.test, icl_shots, random.Random(f"icl-{splits.seed}")), splits.test)
    test_correct, test_shared = shared_correct(handle, test, scoring, counter, context)
    icl_correct, icl_shared = shared_correct(handle, icl, scoring, counter, context)
    return test_correct, icl_correct, {"test": test_shared, "icl": icl_shared}


def shared_correct(
    handle: ModelHandle, data: PromptSet, scoring: Scoring, counter: TokenCounter, context: RunContext,
) -> tuple[np.ndarray, bool]:
    """Unsteered outcomes of `data`, computed once per run for every case that scores the same prompts and
    targets on the same weights with the same batching (so the numbers are exactly those of a case alone);
    True when another case had computed them."""
    def compute() -> dict[str, torch.Tensor]:
        return {"correct": torch.from_numpy(scoring.correct(handle, data, 1, None, counter)[:, 0])}

    if context.shared is None:
        return compute()["correct"].numpy(), False
    key = {
        "kind": "unsteered", "model": handle.fingerprint, "device": str(handle.device),
        "prompts": data.prompts, "targets": data.targets, "scoring": asdict(scoring),
    }
    tensors, outcome = context.shared.get_or_build("unsteered", key, compute)
    return tensors["correct"].numpy(), outcome.hit


def search_layers(layers: tuple[int, ...] | None, num_layers: int, method: str) -> list[int]:
    """The blocks to search: the given ones (checked against the model) or every block."""
    chosen = list(layers) if layers is not None else list(range(num_layers))
    bad = [l for l in chosen if not 0 <= l < num_layers]
    if bad:
        raise SettingsError(f"{method}.layers: {bad} out of range for a model with {num_layers} blocks")
    return chosen


@dataclass
class Search:
    """What the skeleton found: the dev accuracy of every intervention and the test outcomes."""

    layers: list[int]
    dev: PromptSet
    grid: list[Any]  # the interventions searched, each with a `.layer`
    dev_accuracy: np.ndarray
    best: Any
    unsteered: UnsteeredScores
    steered: np.ndarray
    test_report: HookReport
    sweep_reports: dict[int, HookReport]
    counter: TokenCounter
    cache: CacheOutcome


class LayerSearch(ABC):
    """A steering-vector method chosen on dev over an intervention grid of every layer."""

    name: str
    settings_type: type
    artifact: str  # what `extract` returns, for the cache key
    cached: tuple[str, ...]  # the settings the extracted tensors depend on (the cache key)
    side_effects = True  # the control task is scored under the chosen intervention (`RunContext.control`)

    def prepare(self, task: Task, n_dev: int, n_test: int, seed: int) -> tuple[Splits, dict[str, int]]:
        """Cut word pairs into demonstrations, dev and test."""
        require_kind(task, ("pairs",), self.name)
        splits = split_task(task, n_dev, n_test, seed)
        return splits, {"demos": len(splits.demos), "dev": len(splits.dev), "test": len(splits.test)}

    @abstractmethod
    def extract(self, handle: ModelHandle, splits: Splits, settings: Any, counter: TokenCounter,
                context: RunContext) -> dict[str, torch.Tensor]:
        """The tensors steering is built from (cached by model, task, split, seed and `cached` settings)."""

    @abstractmethod
    def grid(self, handle: ModelHandle, layers: list[int], tensors: dict[str, torch.Tensor], settings: Any,
             key: dict[str, Any], context: RunContext) -> tuple[list[Any], Any]:
        """The interventions to search (each with a `.layer`) and the steering state they apply."""

    @abstractmethod
    def intervention(self, handle: ModelHandle, points: list[Any], state: Any,
                     reports: dict[int, HookReport]) -> Intervene:
        """Hooks that apply intervention k of `points` to the rows whose index is k."""

    @abstractmethod
    def outcome(self, handle: ModelHandle, splits: Splits, settings: Any, found: Search, state: Any,
                tensors: dict[str, torch.Tensor]) -> MethodOutcome:
        """The method's record of what it found."""

    @abstractmethod
    def replay_point(self, handle: ModelHandle, tensors: dict[str, torch.Tensor], chosen: dict[str, Any]) -> tuple[Any, Any]:
        """The intervention and steering state that apply a stored vector at a stored chosen setting
        (ReplayError when it does not fit this model)."""

    def replay(self, handle: ModelHandle, splits: Splits, settings: Any, tensors: dict[str, torch.Tensor],
               chosen: dict[str, Any], counter: TokenCounter | None = None) -> np.ndarray:
        """Per-item test outcomes of a stored (accepted) vector on this model: no extraction, no search."""
        point, state = self.replay_point(handle, tensors, chosen)
        scoring = Scoring(settings.batch_size, settings.max_rows, settings.reuse_prefix)
        reports: dict[int, HookReport] = {}
        test = PromptSet.zero_shot(handle, splits.test)
        steered = scoring.correct(handle, test, 1, self.intervention(handle, [point], state, reports),
                                  counter or TokenCounter())
        if not reports.get(point.layer, HookReport()).fired_and_changed:
            raise RuntimeError(f"replayed steering hook on block {point.layer} did not fire or changed nothing")
        return steered[:, 0]

    def quick(self, handle: ModelHandle, splits: Splits, settings: Any, tensors: dict[str, torch.Tensor],
              chosen: dict[str, Any], context: RunContext) -> MethodOutcome:
        """The case judged by its accepted vector (`--steer-quick`): the vector at the accepted setting, the
        unsteered and the 5-shot ICL scores, all on the test items; no extraction and no dev search.
        ReplayError when the vector does not fit this model."""
        counter, clock = TokenCounter(), Phases()
        steered = self.replay(handle, splits, settings, tensors, chosen, counter)
        clock.lap("replay")
        scoring = Scoring(settings.batch_size, settings.max_rows, settings.reuse_prefix)
        test = PromptSet.zero_shot(handle, splits.test)
        unsteered, icl, shared = test_scores(handle, splits, test, settings.icl_shots, scoring, counter, context)
        clock.lap("unsteered_and_icl")
        point, state = self.replay_point(handle, tensors, chosen)
        control = control_outcome(handle, context, self.intervention, [point], state, settings, counter)
        clock.lap("control")
        return MethodOutcome(
            unsteered=unsteered, steered=steered, icl=icl, chosen=dict(chosen), curves={}, vectors={},
            vector_metadata={}, test_items=[p.input for p in splits.test], phases=clock.seconds, control=control,
            diagnostics={"forward_tokens": counter.tokens, "forward_passes": counter.passes, "unsteered_shared": shared},
        )

    def run(self, handle: ModelHandle, task: Task, splits: Splits, settings: Any, context: RunContext) -> MethodOutcome:
        counter = TokenCounter()
        layers = search_layers(settings.layers, handle.adapter.num_layers, self.name)
        key = {
            "kind": f"{self.name}/{self.artifact}",
            "model": handle.fingerprint,
            "task": task.data_hash(),
            "seed": splits.seed,
            "splits": [len(splits.demos), len(splits.dev), len(splits.test)],
            "settings": {k: v for k, v in settings_dict(settings).items() if k in self.cached},
        }
        clock = Phases()
        tensors, cache = context.cache.get_or_build(
            self.name, key, lambda: self.extract(handle, splits, settings, counter, context))
        clock.lap("extract")
        grid, state = self.grid(handle, layers, tensors, settings, key, context)
        clock.lap("grid")

        scoring = Scoring(settings.batch_size, settings.max_rows, settings.reuse_prefix)
        dev = PromptSet.zero_shot(handle, splits.dev)
        test = PromptSet.zero_shot(handle, splits.test)
        label = f"{self.name}: dev search over {len(grid)} interventions, prompts"
        context.report(label, 0, len(dev.prompts))
        sweep: dict[int, HookReport] = {}
        # every intervention edits block `layer`'s output: the blocks up to it run once per prompt
        dev_correct = scoring.correct(handle, dev, len(grid), self.intervention(handle, grid, state, sweep), counter,
                                      unchanged_blocks=[p.layer + 1 for p in grid],
                                      progress=lambda done, total: context.report(label, done, total))
        silent = silent_layers(layers, sweep)
        if silent:
            raise RuntimeError(f"steering hooks on blocks {silent} did not fire or changed nothing")
        context.report(label, len(dev.prompts), len(dev.prompts))
        dev_accuracy = dev_correct.mean(axis=0)
        best = grid[int(np.argmax(dev_accuracy))]  # the first in grid order wins ties
        clock.lap("dev_search")

        unsteered = unsteered_scores(handle, splits, dev, test, settings.icl_shots, scoring, counter, context)
        clock.lap("unsteered_and_icl")
        reports: dict[int, HookReport] = {}
        steered = scoring.correct(handle, test, 1, self.intervention(handle, [best], state, reports), counter)[:, 0]
        report = reports.get(best.layer, HookReport())
        if not report.fired_and_changed:
            raise RuntimeError(f"steering hook on block {best.layer} did not fire or changed nothing: {report}")
        found = Search(layers, dev, grid, dev_accuracy, best, unsteered, steered, report, sweep, counter, cache)
        clock.lap("test")
        control = control_outcome(handle, context, self.intervention, [best], state, settings, counter)
        clock.lap("control")
        outcome = self.outcome(handle, splits, settings, found, state, tensors)
        outcome.phases, outcome.control = clock.seconds, control
        return outcome


class ReplayError(SteerError, ValueError):
    """A stored vector cannot be applied to this model (its width or setting does not fit)."""


def accepted_setting(chosen: dict[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    """One knob of an accepted (stored) chosen setting, exactly of its kind: a layer of 2.5 or `true` is refused,
    not rounded or read as 1 (ReplayError naming the knob)."""
    value = chosen.get(key)
    whole = isinstance(value, int) and not isinstance(value, bool)
    number = whole or (isinstance(value, float) and math.isfinite(value))
    if not (whole if kind is int else number):
        expected = "a whole number" if kind is int else "a finite number"
        raise ReplayError(f"the accepted setting's {key!r} is {value!r}, expected {expected}")
    return kind(value)


def check_replay(handle: ModelHandle, vector: torch.Tensor, layer: int, what: str) -> None:
    """The stored vector fits this model's residual stream and the stored layer exists."""
    width = handle.adapter.hidden_size
    if vector.ndim != 1 or vector.shape[0] != width:
        raise ReplayError(f"the stored {what} has shape {tuple(vector.shape)}; this model's residual stream is {width} wide")
    if not vector.is_floating_point() or not bool(torch.isfinite(vector).all()):
        raise ReplayError(f"the stored {what} ({vector.dtype}) is not a finite floating-point vector")
    if not 0 <= layer < handle.adapter.num_layers:
        raise ReplayError(f"the stored {what} was accepted at block {layer}; this model has {handle.adapter.num_layers}")


def common_diagnostics(found: Search) -> dict[str, Any]:
    """What every layer-search record reports about its run."""
    r = found.test_report
    return {
        "unsteered_dev": float(found.unsteered.dev.mean()),
        "hook": {"calls": r.calls, "rows": r.rows, "max_abs_change": r.max_abs_change,
                 "min_change_over_sweep": min(s.max_abs_change for s in found.sweep_reports.values())},
        "forward_tokens": found.counter.tokens,
        "forward_passes": found.counter.passes,
        "reused_block_tokens": found.counter.reused_block_tokens,
        "unsteered_shared": found.unsteered.shared,
        "cache": {"path": str(found.cache.path), "hit": found.cache.hit, "rebuilt_corrupt": found.cache.rebuilt_corrupt},
    }

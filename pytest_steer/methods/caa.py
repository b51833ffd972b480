"""Contrastive activation addition (CAA; Rimsky et al. 2024) on two-choice behaviour questions.

A vector per block is the mean, over the training questions, of the block's output at the answer letter when
the letter is the behaviour-matching answer minus when it is the other one. Steering adds `multiplier x
vector` to one block's output at the answer position (the prompt's last token, `Answer:`, where the letter is
read: the positions after the question, as CAA steers them). The layer and the (positive) multiplier are chosen
on dev: the most matching choices, then the most matching probability mass, the first in grid order on a tie.
On test: the unsteered outcomes, the steered ones, and the opposite multiplier's (`opposite`), each item's
outcome being 1 when the matching letter is preferred (`mass`: its share of the two letters' probability).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pytest_steer.methods.base import MethodOutcome, Phases, RunContext
from pytest_steer.methods.choices import ChoiceScores, ChoiceSet, score_choices
from pytest_steer.methods.control import control_outcome
from pytest_steer.methods.hooks import HookReport, Intervene, capture_last_token, edits_at, silent_layers
from pytest_steer.methods.scoring import TokenCounter, encode
from pytest_steer.methods.search import ReplayError, accepted_setting, check_replay, search_layers
from pytest_steer.methods.settings import CaaSettings
from pytest_steer.models.loader import ModelHandle
from pytest_steer.cases.settings import settings_dict
from pytest_steer.tasks import ChoiceSplits, Task, split_choices
from pytest_steer.tasks.prompts import choice_prompts, letter_text


def extract_caa_vectors(handle: ModelHandle, splits: ChoiceSplits, settings: CaaSettings,
                        counter: TokenCounter) -> torch.Tensor:
    """Mean (matching - other) block output at the answer letter over the training questions: (L, hidden)."""
    items = splits.train[: settings.n_train]
    prompts, matching = choice_prompts(items)
    texts = [p + letter_text(m) for p, m in zip(prompts, matching)] + [p + letter_text(1 - m) for p, m in zip(prompts, matching)]
    blocks = handle.adapter.blocks(handle.model)
    with capture_last_token(blocks) as captured, torch.inference_mode():
        for start in range(0, len(texts), settings.batch_size):
            batch = encode(handle.tokenizer, texts[start : start + settings.batch_size])
            handle.model(**batch, logits_to_keep=1, use_cache=False)
            counter.add(batch["attention_mask"])
    n = len(items)
    return torch.stack([(acts := torch.cat(chunks))[:n].sub(acts[n:]).mean(dim=0) for chunks in captured])


@dataclass(frozen=True)
class Point:
    """One CAA intervention: add `multiplier x vector` to block `layer`'s output at the answer position."""

    layer: int
    multiplier: float


def adds_at(handle: ModelHandle, points: list[Point], vectors: dict[int, torch.Tensor],
            reports: dict[int, HookReport]) -> Intervene:
    """Intervention k adds `points[k].multiplier * vectors[points[k].layer]` at the last position."""
    multipliers = torch.tensor([p.multiplier for p in points], dtype=torch.float32)

    def add(last: torch.Tensor, layer: int, rows: torch.Tensor, intervention: torch.Tensor) -> torch.Tensor:
        scale = torch.where(rows, multipliers.to(last.device)[intervention], 0.0)
        return (last.float() + scale[:, None] * vectors[layer].to(last.device, torch.float32)).to(last.dtype)

    return edits_at(lambda l: handle.adapter.block(handle.model, l), "output",
                    torch.tensor([p.layer for p in points]), add, reports)


class CaaMethod:
    """CAA: vectors from contrastive two-choice answers (cached), layer and multiplier chosen on dev."""

    name = "caa"
    side_effects = True
    settings_type = CaaSettings

    def prepare(self, task: Task, n_dev: int, n_test: int, seed: int) -> tuple[ChoiceSplits, dict[str, int]]:
        splits = split_choices(task, n_dev, n_test, seed, min_train=1)
        return splits, {"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)}

    def _score(self, handle: ModelHandle, data: ChoiceSet, points: list[Point], vectors: dict[int, torch.Tensor],
               settings: CaaSettings, counter: TokenCounter, reports: dict[int, HookReport],
               context: RunContext | None = None, label: str = "") -> ChoiceScores:
        progress = None if context is None else (lambda done, total: context.report(label, done, total))
        return score_choices(handle, data, len(points), adds_at(handle, points, vectors, reports), counter,
                             batch_size=settings.batch_size, max_rows=settings.max_rows, last_token_only=True,
                             unchanged_blocks=[p.layer + 1 for p in points], progress=progress)

    def _steered(self, handle: ModelHandle, data: ChoiceSet, point: Point, vector: torch.Tensor,
                 settings: CaaSettings, counter: TokenCounter) -> ChoiceScores:
        """One intervention alone (what the run, the replay and the quick path all report)."""
        reports: dict[int, HookReport] = {}
        scores = self._score(handle, data, [point], {point.layer: vector}, settings, counter, reports)
        if not reports.get(point.layer, HookReport()).fired_and_changed:
            raise RuntimeError(f"steering hook on block {point.layer} did not fire or changed nothing")
        return scores.column(0)

    def _unsteered(self, handle: ModelHandle, data: ChoiceSet, settings: CaaSettings,
                   counter: TokenCounter) -> ChoiceScores:
        return score_choices(handle, data, 1, None, counter, batch_size=settings.batch_size,
                             max_rows=settings.max_rows, last_token_only=True).column(0)

    def run(self, handle: ModelHandle, task: Task, splits: ChoiceSplits, settings: CaaSettings,
            context: RunContext) -> MethodOutcome:
        counter, clock = TokenCounter(), Phases()
        layers = search_layers(settings.layers, handle.adapter.num_layers, self.name)
        key = {"kind": "caa/vectors", "model": handle.fingerprint, "task": task.data_hash(), "seed": splits.seed,
               "splits": [len(splits.train), len(splits.dev), len(splits.test)],
               "settings": {k: v for k, v in settings_dict(settings).items() if k in ("n_train",)}}
        label = f"extracting CAA vectors ({min(settings.n_train, len(splits.train))} questions)"
        context.report(label, 0, 1)
        tensors, cache = context.cache.get_or_build(
            self.name, key, lambda: {"vectors": extract_caa_vectors(handle, splits, settings, counter)})
        context.report(label, 1, 1)
        vectors = tensors["vectors"]
        clock.lap("extract")

        dev, test = ChoiceSet.build(handle, splits.dev), ChoiceSet.build(handle, splits.test)
        grid = [Point(l, m) for l in layers for m in settings.multipliers]
        sweep: dict[int, HookReport] = {}
        found = self._score(handle, dev, grid, {l: vectors[l] for l in layers}, settings, counter, sweep, context,
                            f"caa: dev search over {len(grid)} interventions, questions")
        silent = silent_layers(layers, sweep)
        if silent:
            raise RuntimeError(f"steering hooks on blocks {silent} did not fire or changed nothing")
        dev_chose, dev_mass = found.chose.mean(axis=0), found.mass.mean(axis=0)
        best_index = max(range(len(grid)), key=lambda k: (dev_chose[k], dev_mass[k], -k))
        best = grid[best_index]
        clock.lap("dev_search")

        unsteered_dev = self._unsteered(handle, dev, settings, counter)
        unsteered = self._unsteered(handle, test, settings, counter)
        steered = self._steered(handle, test, best, vectors[best.layer], settings, counter)
        opposite = self._steered(handle, test, Point(best.layer, -best.multiplier), vectors[best.layer], settings, counter)
        clock.lap("test")
        control = control_outcome(handle, context, adds_at, [Point(best.layer, best.multiplier)],
                                  {best.layer: vectors[best.layer]}, settings, counter)
        clock.lap("control")

        at_best = [k for k, p in enumerate(grid) if p.multiplier == best.multiplier]
        at_layer = [k for k, p in enumerate(grid) if p.layer == best.layer]
        return MethodOutcome(
            unsteered=unsteered.chose, steered=steered.chose, icl=None,
            chosen={"layer": best.layer, "multiplier": best.multiplier,
                    "relative_depth": round(best.layer / handle.adapter.num_layers, 3)},
            curves={"dev_layers": layers, "dev_accuracy": [float(dev_chose[k]) for k in at_best],
                    "multipliers": list(settings.multipliers),
                    "dev_accuracy_by_multiplier": [float(dev_chose[k]) for k in at_layer]},
            vectors={"caa_vector": vectors[best.layer]},
            vector_metadata={"layer": str(best.layer), "multiplier": repr(best.multiplier), "position": "last",
                             "intervention": "add multiplier x vector to the block output"},
            diagnostics={
                "unsteered_dev": float(unsteered_dev.chose.mean()),
                # graded, so moved by float rounding between machines: a diagnostic, not a compared curve
                "dev_mass": [round(float(dev_mass[k]), 6) for k in at_best],
                "hook": {"min_change_over_sweep": min(r.max_abs_change for r in sweep.values())},
                "vector_norm": round(float(vectors[best.layer].norm()), 4),
                "forward_tokens": counter.tokens, "forward_passes": counter.passes,
                "reused_block_tokens": counter.reused_block_tokens,
                "cache": {"path": str(cache.path), "hit": cache.hit, "rebuilt_corrupt": cache.rebuilt_corrupt},
            },
            test_items=test.texts(),
            secondary={"mass": (unsteered.mass, steered.mass), "opposite": (unsteered.chose, opposite.chose)},
            phases=clock.seconds, control=control,
        )

    def _replay_point(self, handle: ModelHandle, tensors: dict[str, torch.Tensor],
                      chosen: dict[str, Any]) -> tuple[Point, torch.Tensor]:
        vector, layer = tensors.get("caa_vector"), accepted_setting(chosen, "layer", int)
        if vector is None:
            raise ReplayError("the stored file holds no 'caa_vector'")
        check_replay(handle, vector, layer, "CAA vector")
        return Point(layer, accepted_setting(chosen, "multiplier", float)), vector

    def replay(self, handle: ModelHandle, splits: ChoiceSplits, settings: CaaSettings, tensors: dict[str, torch.Tensor],
               chosen: dict[str, Any]) -> np.ndarray:
        """The accepted vector at the accepted layer and multiplier: per-item test outcomes on this model."""
        point, vector = self._replay_point(handle, tensors, chosen)
        return self._steered(handle, ChoiceSet.build(handle, splits.test), point, vector, settings, TokenCounter()).chose

    def quick(self, handle: ModelHandle, splits: ChoiceSplits, settings: CaaSettings, tensors: dict[str, torch.Tensor],
              chosen: dict[str, Any], context: RunContext) -> MethodOutcome:
        """The case judged by its accepted vector alone (`--steer-quick`): no extraction, no dev search."""
        counter, clock = TokenCounter(), Phases()
        point, vector = self._replay_point(handle, tensors, chosen)
        test = ChoiceSet.build(handle, splits.test)
        steered = self._steered(handle, test, point, vector, settings, counter)
        opposite = self._steered(handle, test, Point(point.layer, -point.multiplier), vector, settings, counter)
        unsteered = self._unsteered(handle, test, settings, counter)
        clock.lap("replay")
        control = control_outcome(handle, context, adds_at, [point], {point.layer: vector}, settings, counter)
        clock.lap("control")
        return MethodOutcome(
            unsteered=unsteered.chose, steered=steered.chose, icl=None, chosen=dict(chosen), curves={}, vectors={},
            vector_metadata={}, test_items=test.texts(), phases=clock.seconds, control=control,
            secondary={"mass": (unsteered.mass, steered.mass), "opposite": (unsteered.chose, opposite.chose)},
            diagnostics={"forward_tokens": counter.tokens, "forward_passes": counter.passes},
        )

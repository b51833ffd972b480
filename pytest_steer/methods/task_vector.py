"""Task vectors (Hendel et al. 2023) as the reliability study ran them.

A vector per block is the mean block output at the last token of few-shot prompts
whose queries come from the demonstration pool; steering writes it over the last
position of a zero-shot prompt at one block. The block is chosen on dev (lowest
wins ties) after searching every layer, and test accuracy is reported there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch

from pytest_steer.methods.base import MethodOutcome, RunContext
from pytest_steer.methods.hooks import HookReport, Intervene, capture_last_token, edits_at
from pytest_steer.methods.scoring import TokenCounter, encode
from pytest_steer.methods.search import LayerSearch, Search, accepted_setting, check_replay, common_diagnostics
from pytest_steer.methods.settings import TaskVectorSettings
from pytest_steer.models.loader import ModelHandle
from pytest_steer.tasks import Pair, Splits
from pytest_steer.tasks.prompts import icl_prompts


def extract_task_vectors(
    handle: ModelHandle, demos: tuple[Pair, ...], settings: TaskVectorSettings, seed: int,
    counter: TokenCounter | None = None,
) -> torch.Tensor:
    """Mean last-token output of every block over few-shot prompts with dummy queries: (L, hidden)."""
    if len(demos) < settings.n_shots + 1:
        raise ValueError(f"task vectors need more than {settings.n_shots} demonstrations, the pool has {len(demos)}")
    rng = random.Random(f"task-vector-extract-{seed}")
    queries = tuple(rng.choice(demos) for _ in range(settings.n_prompts))
    prompts = icl_prompts(demos, queries, settings.n_shots, rng)
    blocks = handle.adapter.blocks(handle.model)
    with capture_last_token(blocks) as captured, torch.inference_mode():
        for start in range(0, len(prompts), settings.batch_size):
            batch = encode(handle.tokenizer, prompts[start : start + settings.batch_size])
            handle.model(**batch, logits_to_keep=1, use_cache=False)
            if counter is not None:
                counter.add(batch["attention_mask"])
    return torch.stack([torch.cat(chunks).mean(dim=0) for chunks in captured])


@dataclass(frozen=True)
class LayerPoint:
    """One task-vector intervention: replace block `layer`'s last-token output by its vector."""

    layer: int


def replace_at_layers(
    handle: ModelHandle, layers: list[int], vectors: torch.Tensor, reports: dict[int, HookReport]
) -> Intervene:
    """Intervention k writes `vectors[layers[k]]` over block `layers[k]`'s last-token output."""

    def replace(last: torch.Tensor, layer: int, rows: torch.Tensor, _intervention: torch.Tensor) -> torch.Tensor:
        out = last.clone()
        out[rows] = vectors[layer].to(last.device, last.dtype)
        return out

    return edits_at(lambda l: handle.adapter.block(handle.model, l), "output", torch.tensor(layers), replace, reports)


class TaskVectorMethod(LayerSearch):
    """The task-vector method: extract (cached), search every layer on dev, report on test."""

    name = "task_vector"
    settings_type = TaskVectorSettings
    artifact = "vectors"
    cached = ("n_prompts", "n_shots")

    def extract(self, handle: ModelHandle, splits: Splits, settings: TaskVectorSettings, counter: TokenCounter,
                context: RunContext) -> dict[str, torch.Tensor]:
        label = f"extracting task vectors ({settings.n_prompts} prompts)"
        context.report(label, 0, 1)
        vectors = extract_task_vectors(handle, splits.demos, settings, splits.seed, counter)
        context.report(label, 1, 1)
        return {"vectors": vectors}

    def grid(self, handle: ModelHandle, layers: list[int], tensors: dict[str, torch.Tensor], settings: Any,
             key: dict[str, Any], context: RunContext) -> tuple[list[LayerPoint], torch.Tensor]:
        return [LayerPoint(l) for l in layers], tensors["vectors"]

    def intervention(self, handle: ModelHandle, points: list[LayerPoint], state: torch.Tensor,
                     reports: dict[int, HookReport]) -> Intervene:
        return replace_at_layers(handle, [p.layer for p in points], state, reports)

    def replay_point(self, handle: ModelHandle, tensors: dict[str, torch.Tensor],
                     chosen: dict[str, Any]) -> tuple[LayerPoint, dict[int, torch.Tensor]]:
        vector, layer = tensors["task_vector"], accepted_setting(chosen, "layer", int)
        check_replay(handle, vector, layer, "task vector")
        return LayerPoint(layer), {layer: vector}

    def outcome(self, handle: ModelHandle, splits: Splits, settings: TaskVectorSettings, found: Search,
                state: torch.Tensor, tensors: dict[str, torch.Tensor]) -> MethodOutcome:
        best = found.best.layer
        return MethodOutcome(
            unsteered=found.unsteered.test,
            steered=found.steered,
            icl=found.unsteered.icl,
            chosen={"layer": best, "relative_depth": round(best / handle.adapter.num_layers, 3)},
            curves={"dev_layers": found.layers, "dev_accuracy": [float(x) for x in found.dev_accuracy]},
            vectors={"task_vector": state[best]},
            vector_metadata={"layer": str(best), "position": "last", "intervention": "replace block output"},
            diagnostics=common_diagnostics(found),
            test_items=[p.input for p in splits.test],
        )

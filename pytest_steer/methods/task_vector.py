"""Task vectors (Hendel et al. 2023) as the reliability study ran them.

A vector per block is the mean block output at the last token of few-shot prompts
whose queries come from the demonstration pool; steering writes it over the last
position of a zero-shot prompt at one block. The block is chosen on dev (lowest
wins ties) after searching every layer, and test accuracy is reported there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from pytest_steer.methods.base import MethodOutcome, RunContext
from pytest_steer.methods.hooks import HookReport, capture_last_token, edits_at_blocks
from pytest_steer.methods.scoring import Intervene, TokenCounter, encode
from pytest_steer.methods.word_tasks import (
    PromptSet,
    ScoringSettings,
    icl_prompts,
    prepare_word_task,
    score,
    unsteered_baselines,
)
from pytest_steer.models.loader import ModelHandle
from pytest_steer.settings import SettingsError, settings_dict
from pytest_steer.tasks import Pair, Splits, Task


@dataclass(frozen=True)
class TaskVectorSettings:
    """Knobs of the task-vector method (defaults: ours, for small models on CPU)."""

    n_prompts: int = 30
    n_shots: int = 5
    layers: tuple[int, ...] | None = None  # None: every block; never a stride by default
    batch_size: int = 32
    max_rows: int = 256  # rows (prompt x variant) per last-token pass
    reuse_prefix: bool = True  # encode the prompt minus its last token once (same numbers, less work)

    def validate(self, where: str) -> None:
        for name in ("n_prompts", "n_shots", "batch_size", "max_rows"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{where}.{name}: must be at least 1")


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


def replace_at_layers(
    handle: ModelHandle, layers: list[int], vectors: torch.Tensor, reports: dict[int, HookReport]
) -> Intervene:
    """Variant k writes `vectors[layers[k]]` over block `layers[k]`'s last-token output."""

    def replace(last: torch.Tensor, layer: int, rows: torch.Tensor, _variant: torch.Tensor) -> torch.Tensor:
        out = last.clone()
        out[rows] = vectors[layer].to(last.dtype)
        return out

    return edits_at_blocks(lambda l: handle.adapter.block(handle.model, l), torch.tensor(layers), replace, reports)


class TaskVectorMethod:
    """The task-vector method: extract (cached), search every layer on dev, report on test."""

    name = "task_vector"
    settings_type = TaskVectorSettings
    prepare = staticmethod(prepare_word_task)

    def run(
        self, handle: ModelHandle, task: Task, splits: Splits, settings: TaskVectorSettings, context: RunContext
    ) -> MethodOutcome:
        counter = TokenCounter()
        n_layers = handle.adapter.num_layers
        layers = list(settings.layers) if settings.layers is not None else list(range(n_layers))
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise SettingsError(f"task_vector.layers: {bad} out of range for a model with {n_layers} blocks")

        def build() -> dict[str, torch.Tensor]:
            if context.progress:
                context.progress(f"extracting task vectors ({settings.n_prompts} prompts)", 0, 1)
            vectors = extract_task_vectors(handle, splits.demos, settings, splits.seed, counter)
            if context.progress:
                context.progress(f"extracting task vectors ({settings.n_prompts} prompts)", 1, 1)
            return {"vectors": vectors}

        key = {
            "kind": "task_vector/vectors",
            "model": handle.fingerprint,
            "task": task.data_hash(),
            "seed": splits.seed,
            "splits": [len(splits.demos), len(splits.dev), len(splits.test)],
            "settings": {k: v for k, v in settings_dict(settings).items() if k in ("n_prompts", "n_shots")},
        }
        tensors, cache = context.cache.get_or_build("task_vector", key, build)
        vectors = tensors["vectors"]

        scoring = ScoringSettings(settings.batch_size, settings.max_rows, settings.reuse_prefix)
        dev = PromptSet.zero_shot(handle, splits.dev)
        test = PromptSet.zero_shot(handle, splits.test)

        if context.progress:
            context.progress(f"dev sweep over {len(layers)} layers", 0, 1)
        sweep_reports: dict[int, HookReport] = {}
        dev_correct = score(handle, dev, len(layers), replace_at_layers(handle, layers, vectors, sweep_reports), scoring, counter)
        silent = [l for l in layers if l not in sweep_reports or not sweep_reports[l].fired_and_changed]
        if silent:
            raise RuntimeError(f"steering hooks on blocks {silent} did not fire or changed nothing")
        dev_curve = [float(x) for x in dev_correct.mean(axis=0)]
        if context.progress:
            context.progress(f"dev sweep over {len(layers)} layers", 1, 1)
        best = layers[int(np.argmax(dev_curve))]  # argmax returns the first (lowest) layer on ties

        base = unsteered_baselines(handle, splits, dev, test, settings.n_shots, scoring, counter)
        test_reports: dict[int, HookReport] = {}
        steered = score(handle, test, 1, replace_at_layers(handle, [best], vectors, test_reports), scoring, counter)[:, 0]
        report = test_reports[best]
        if not report.fired_and_changed:
            raise RuntimeError(f"steering hook on block {best} did not fire or changed nothing: {report}")
        changed_min = min(r.max_abs_change for r in sweep_reports.values())

        return MethodOutcome(
            unsteered=base.unsteered_test,
            steered=steered,
            ceiling=base.icl_test,
            chosen={"layer": best, "relative_depth": round(best / n_layers, 3)},
            curves={"dev_layers": layers, "dev_accuracy": dev_curve},
            vectors={"task_vector": vectors[best]},
            vector_metadata={"layer": str(best), "position": "last", "intervention": "replace block output"},
            diagnostics={
                "unsteered_dev": float(base.unsteered_dev.mean()),
                "hook": {"calls": report.calls, "rows": report.rows, "max_abs_change": report.max_abs_change,
                         "min_change_over_sweep": changed_min},
                "forward_tokens": counter.tokens,
                "forward_passes": counter.passes,
                "cache": {"path": str(cache.path), "hit": cache.hit, "rebuilt_corrupt": cache.rebuilt_corrupt},
            },
            test_items=[p.input for p in splits.test],
        )

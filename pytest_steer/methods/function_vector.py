"""Function vectors (Todd et al. 2024) with the strength lambda of the reliability study.

1. Mean head activations: the input of each block's attention output projection at
   the last token of clean few-shot prompts, split into (heads, head_dim), averaged.
2. Causal indirect effect (CIE): on prompts whose demonstration labels are shuffled,
   patch one head's slice with its mean and measure p(target) patched - unpatched.
   All L x H patches of a prompt run as one batch of last-token rows on a shared
   prefix cache (a patch touches only the last token), or approximately with one
   gradient per prompt (attribution patching).
3. FV = sum over the top-n heads of o_proj(head mean in its slice of a zero vector),
   with the projection bias excluded (o_proj(x) - o_proj(0)).
4. Steering adds lambda * FV to block ell's output at the last token of the zero-shot
   prompt; (ell, n, lambda) is chosen on dev over the whole grid in one batched sweep.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pytest_steer.methods.base import MethodOutcome, RunContext
from pytest_steer.methods.hooks import (
    HookReport,
    capture_last_token,
    capture_last_token_input,
    edit_last_token_input,
    edits_at_blocks,
)
from pytest_steer.methods.scoring import Intervene, TokenCounter, encode, score_variants
from pytest_steer.methods.word_tasks import (
    PromptSet,
    ScoringSettings,
    prepare_word_task,
    score,
    unsteered_baselines,
)
from pytest_steer.models.loader import ModelHandle
from pytest_steer.settings import SettingsError, settings_dict
from pytest_steer.tasks import Pair, Splits, Task, few_shot_prompt


@dataclass(frozen=True)
class FunctionVectorSettings:
    """Knobs of the function-vector method; the grid defaults follow the study's range."""

    n_mean_prompts: int = 25
    n_cie_prompts: int = 25
    n_shots: int = 10
    icl_shots: int = 5
    heads: tuple[int, ...] = (2, 4, 8, 16, 32)  # capped at L x H
    strengths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    layers: tuple[int, ...] | None = None  # None: every block
    cie: Literal["exact", "attribution"] = "exact"
    batch_size: int = 16
    max_rows: int = 256
    reuse_prefix: bool = True

    def validate(self, where: str) -> None:
        for name in ("n_mean_prompts", "n_cie_prompts", "n_shots", "icl_shots", "batch_size", "max_rows"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{where}.{name}: must be at least 1")
        if not self.heads or min(self.heads) < 1:
            raise SettingsError(f"{where}.heads: expected a non-empty list of positive head counts")
        if not self.strengths:
            raise SettingsError(f"{where}.strengths: expected a non-empty list of numbers")


# ---------------------------------------------------------------- extraction


def _few_shot_queries(demos: tuple[Pair, ...], n: int, n_shots: int, rng: random.Random) -> tuple[list[list[Pair]], list[Pair]]:
    if len(demos) < n_shots + 1:
        raise ValueError(f"function vectors need more than {n_shots} demonstrations, the pool has {len(demos)}")
    shots, queries = [], []
    for _ in range(n):
        picked = rng.sample(list(demos), n_shots + 1)
        shots.append(picked[:-1])
        queries.append(picked[-1])
    return shots, queries


def mean_head_activations(
    handle: ModelHandle, demos: tuple[Pair, ...], settings: FunctionVectorSettings, seed: int, counter: TokenCounter
) -> torch.Tensor:
    """Mean o_proj input at the last token of clean few-shot prompts: (L, H, head_dim)."""
    a = handle.adapter
    shots, queries = _few_shot_queries(demos, settings.n_mean_prompts, settings.n_shots, random.Random(f"fv-mean-{seed}"))
    prompts = [few_shot_prompt(s, q.input) for s, q in zip(shots, queries)]
    modules = [a.attn_out(handle.model, l) for l in range(a.num_layers)]
    with capture_last_token_input(modules) as captured, torch.inference_mode():
        for start in range(0, len(prompts), settings.batch_size):
            batch = encode(handle.tokenizer, prompts[start : start + settings.batch_size])
            handle.model(**batch, logits_to_keep=1, use_cache=False)
            counter.add(batch["attention_mask"])
    means = torch.stack([torch.cat(chunks).mean(dim=0) for chunks in captured])
    return means.reshape(a.num_layers, a.num_heads, a.head_dim)


def shuffled_prompts(handle: ModelHandle, demos: tuple[Pair, ...], settings: FunctionVectorSettings, seed: int) -> PromptSet:
    """Few-shot prompts whose demonstration labels are shuffled among the demos (query and target intact)."""
    rng = random.Random(f"fv-cie-{seed}")
    shots, queries = _few_shot_queries(demos, settings.n_cie_prompts, settings.n_shots, rng)
    prompts = []
    for demo, query in zip(shots, queries):
        labels = [d.output for d in demo]
        rng.shuffle(labels)
        prompts.append(few_shot_prompt([Pair(d.input, y) for d, y in zip(demo, labels)], query.input))
    return PromptSet.build(handle, prompts, queries)


def patch_heads(handle: ModelHandle, means: torch.Tensor, reports: dict[int, HookReport] | None = None) -> Intervene:
    """Variant v = layer * H + head writes that head's mean into its slice of the o_proj input."""
    a = handle.adapter
    width = a.num_heads * a.head_dim
    head_of_dim = torch.arange(width) // a.head_dim

    @contextmanager
    def intervene(variant: torch.Tensor) -> Iterator[None]:
        layer_of_row = variant // a.num_heads
        head_of_row = variant % a.num_heads
        with ExitStack() as stack:
            for layer in torch.unique(layer_of_row).tolist():
                rows = layer_of_row == layer
                mask = torch.zeros(len(variant), width, dtype=torch.bool)
                mask[rows] = head_of_dim.unsqueeze(0) == head_of_row[rows].unsqueeze(1)
                flat_mean = means[layer].reshape(width)

                def edit(last: torch.Tensor, mask: torch.Tensor = mask, flat_mean: torch.Tensor = flat_mean) -> torch.Tensor:
                    return torch.where(mask, flat_mean.to(last.dtype), last)

                report = stack.enter_context(edit_last_token_input(a.attn_out(handle.model, layer), edit))
                if reports is not None:
                    reports[layer] = report
            yield

    return intervene


def exact_cie(
    handle: ModelHandle, means: torch.Tensor, data: PromptSet, settings: FunctionVectorSettings, counter: TokenCounter,
    layers: list[int] | None = None,
) -> torch.Tensor:
    """Mean over prompts of p(target | head patched with its mean) - p(target): (L, H)."""
    a = handle.adapter
    layers = list(range(a.num_layers)) if layers is None else layers
    variants = torch.tensor([l * a.num_heads + h for l in layers for h in range(a.num_heads)])
    clean = score_variants(handle, data.prompts, data.targets, 1, None, batch_size=settings.batch_size,
                           max_rows=settings.max_rows, counter=counter, reuse_prefix=settings.reuse_prefix)
    base_patch = patch_heads(handle, means)
    patched = score_variants(
        handle, data.prompts, data.targets, len(variants), lambda v: base_patch(variants[v]),
        batch_size=settings.batch_size, max_rows=settings.max_rows, counter=counter, reuse_prefix=settings.reuse_prefix,
    )
    effect = (patched.target_logprob.exp() - clean.target_logprob.exp()).mean(dim=0)
    cie = torch.zeros(a.num_layers, a.num_heads)
    cie.view(-1)[variants] = effect
    return cie


def attribution_cie(
    handle: ModelHandle, means: torch.Tensor, data: PromptSet, counter: TokenCounter
) -> torch.Tensor:
    """First-order CIE: (mean - activation) . d p(target) / d activation, one backward pass per prompt."""
    a = handle.adapter
    model = handle.model
    modules = [a.attn_out(model, l) for l in range(a.num_layers)]
    total = torch.zeros(a.num_layers, a.num_heads)
    for prompt, target in zip(data.prompts, data.targets):
        batch = encode(handle.tokenizer, [prompt])
        inputs: list[torch.Tensor] = []
        handles = []

        def keep(_mod: torch.nn.Module, args: tuple[object, ...]) -> None:
            x = args[0]
            assert isinstance(x, torch.Tensor)
            x.retain_grad()
            inputs.append(x)

        try:
            handles = [m.register_forward_pre_hook(keep) for m in modules]
            with torch.enable_grad():
                embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
                out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                            position_ids=batch["position_ids"], logits_to_keep=1, use_cache=False)
                prob = torch.softmax(out.logits[0, -1].float(), dim=-1)[target]
                prob.backward()
        finally:
            for h in handles:
                h.remove()
        counter.add(batch["attention_mask"])
        for layer, x in enumerate(inputs):
            act = x.detach()[0, -1].reshape(a.num_heads, a.head_dim)
            grad = x.grad[0, -1].reshape(a.num_heads, a.head_dim)  # type: ignore[index]
            total[layer] += ((means[layer] - act) * grad).sum(dim=-1)
    model.zero_grad(set_to_none=True)
    return total / len(data.prompts)


def head_outputs(handle: ModelHandle, means: torch.Tensor) -> torch.Tensor:
    """What each head's mean adds through its block's output projection: (L, H, hidden), bias excluded."""
    a = handle.adapter
    width = a.num_heads * a.head_dim
    out = []
    with torch.inference_mode():
        for layer in range(a.num_layers):
            proj = a.attn_out(handle.model, layer)
            placed = torch.zeros(a.num_heads, width)
            for h in range(a.num_heads):
                placed[h, h * a.head_dim : (h + 1) * a.head_dim] = means[layer, h]
            out.append(proj(placed) - proj(torch.zeros(1, width)))
    return torch.stack(out)


def function_vector(outputs: torch.Tensor, cie: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Sum of the top-n heads' outputs by CIE (ties: lower layer, then lower head)."""
    flat = cie.reshape(-1)
    order = sorted(range(flat.numel()), key=lambda i: (-float(flat[i]), i))[:n_heads]
    n_h = cie.shape[1]
    heads = [(i // n_h, i % n_h) for i in order]
    vector = torch.stack([outputs[l, h] for l, h in heads]).sum(dim=0)
    return vector, heads


# ---------------------------------------------------------------- steering


@dataclass(frozen=True)
class GridPoint:
    layer: int
    n_heads: int
    strength: float


def add_at_layers(
    handle: ModelHandle, grid: list[GridPoint], vectors: dict[int, torch.Tensor], reports: dict[int, HookReport]
) -> Intervene:
    """Variant k adds strength_k * FV(n_k) to block layer_k's output at the last token."""
    additions = torch.stack([p.strength * vectors[p.n_heads] for p in grid])
    def add(last: torch.Tensor, _layer: int, rows: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(last)
        delta[rows] = additions[variant[rows]].to(last.dtype)
        return last + delta

    layer_of = torch.tensor([p.layer for p in grid])
    return edits_at_blocks(lambda l: handle.adapter.block(handle.model, l), layer_of, add, reports)


class FunctionVectorMethod:
    """Function vectors: head attribution (cached), (layer, heads, strength) search on dev, test report."""

    name = "function_vector"
    settings_type = FunctionVectorSettings
    prepare = staticmethod(prepare_word_task)

    def run(
        self, handle: ModelHandle, task: Task, splits: Splits, settings: FunctionVectorSettings, context: RunContext
    ) -> MethodOutcome:
        a = handle.adapter
        counter = TokenCounter()
        layers = list(settings.layers) if settings.layers is not None else list(range(a.num_layers))
        bad = [l for l in layers if not 0 <= l < a.num_layers]
        if bad:
            raise SettingsError(f"function_vector.layers: {bad} out of range for a model with {a.num_layers} blocks")
        n_values = sorted({min(n, a.num_layers * a.num_heads) for n in settings.heads})

        def build() -> dict[str, torch.Tensor]:
            progress = context.progress
            if progress:
                progress("function vectors: mean head activations", 0, 2)
            means = mean_head_activations(handle, splits.demos, settings, splits.seed, counter)
            if progress:
                progress("function vectors: mean head activations", 1, 2)
            data = shuffled_prompts(handle, splits.demos, settings, splits.seed)
            if settings.cie == "exact":
                cie = exact_cie(handle, means, data, settings, counter)
            else:
                cie = attribution_cie(handle, means, data, counter)
            if progress:
                progress("function vectors: mean head activations", 2, 2)
            return {"mean_activations": means, "cie": cie}

        key = {
            "kind": "function_vector/heads",
            "model": handle.fingerprint,
            "task": task.data_hash(),
            "seed": splits.seed,
            "splits": [len(splits.demos), len(splits.dev), len(splits.test)],
            "settings": {k: v for k, v in settings_dict(settings).items() if k in ("n_mean_prompts", "n_cie_prompts", "n_shots", "cie")},
        }
        tensors, cache = context.cache.get_or_build("function_vector", key, build)
        means, cie = tensors["mean_activations"], tensors["cie"]
        outputs = head_outputs(handle, means)
        built = {n: function_vector(outputs, cie, n) for n in n_values}
        head_lists = {n: heads for n, (_, heads) in built.items()}
        fv_tensors, _ = context.cache.get_or_build(
            "function_vector", {**key, "kind": "function_vector/vectors", "heads": n_values},
            lambda: {f"fv_{n}": vector for n, (vector, _) in built.items()},
        )
        vectors = {n: fv_tensors[f"fv_{n}"] for n in n_values}

        scoring = ScoringSettings(settings.batch_size, settings.max_rows, settings.reuse_prefix)
        dev = PromptSet.zero_shot(handle, splits.dev)
        test = PromptSet.zero_shot(handle, splits.test)
        grid = [GridPoint(l, n, s) for l in layers for n in n_values for s in settings.strengths]
        if context.progress:
            context.progress(f"function vectors: dev grid of {len(grid)} settings", 0, 1)
        reports: dict[int, HookReport] = {}
        dev_correct = score(handle, dev, len(grid), add_at_layers(handle, grid, vectors, reports), scoring, counter)
        silent = [l for l in layers if l not in reports or not reports[l].fired_and_changed]
        if silent:
            raise RuntimeError(f"steering hooks on blocks {silent} did not fire or changed nothing")
        if context.progress:
            context.progress(f"function vectors: dev grid of {len(grid)} settings", 1, 1)
        dev_acc = dev_correct.mean(axis=0)
        best = grid[int(np.argmax(dev_acc))]  # first in (layer, n, strength) order wins ties
        curve = [float(dev_acc[i]) for i, p in enumerate(grid) if p.n_heads == best.n_heads and p.strength == best.strength]

        base = unsteered_baselines(handle, splits, dev, test, settings.icl_shots, scoring, counter)
        test_reports: dict[int, HookReport] = {}
        steered = score(handle, test, 1, add_at_layers(handle, [best], vectors, test_reports), scoring, counter)[:, 0]
        if not test_reports.get(best.layer, HookReport()).fired_and_changed:
            raise RuntimeError(f"steering hook on block {best.layer} did not fire or changed nothing")

        fv = vectors[best.n_heads]
        residual_norm = _last_token_residual_norm(handle, dev.prompts[: settings.batch_size], best.layer)
        notes = ["projection bias excluded: each head contributes o_proj(x) - o_proj(0)"]
        if a.post_attn_out_norm:
            notes.append(
                f"{a.model_type} normalises the attention output after o_proj; the function vector is o_proj(head) "
                "and bypasses that norm"
            )
        return MethodOutcome(
            unsteered=base.unsteered_test,
            steered=steered,
            ceiling=base.icl_test,
            chosen={"layer": best.layer, "heads": best.n_heads, "strength": best.strength,
                    "relative_depth": round(best.layer / a.num_layers, 3)},
            curves={"dev_layers": layers, "dev_accuracy": curve,
                    "dev_best_per_layer": [float(max(dev_acc[i] for i, p in enumerate(grid) if p.layer == l)) for l in layers]},
            vectors={"function_vector": fv, "cie": cie},
            vector_metadata={
                "layer": str(best.layer), "heads": str(best.n_heads), "strength": str(best.strength),
                "top_heads": str(head_lists[best.n_heads]), "position": "last", "intervention": "add strength * fv to block output",
            },
            diagnostics={
                "top_heads": [list(h) for h in head_lists[best.n_heads]],
                "cie_method": settings.cie,
                "grid_size": len(grid),
                "fv_norm": float(fv.norm()),
                "residual_norm_at_layer": residual_norm,
                "notes": notes,
                "unsteered_dev": float(base.unsteered_dev.mean()),
                "hook": {"calls": test_reports[best.layer].calls, "rows": test_reports[best.layer].rows,
                         "max_abs_change": test_reports[best.layer].max_abs_change},
                "forward_tokens": counter.tokens,
                "forward_passes": counter.passes,
                "cache": {"path": str(cache.path), "hit": cache.hit, "rebuilt_corrupt": cache.rebuilt_corrupt},
            },
            test_items=[p.input for p in splits.test],
        )


def _last_token_residual_norm(handle: ModelHandle, prompts: list[str], layer: int) -> float:
    """Mean norm of block `layer`'s last-token output: the scale lambda * FV competes with."""
    with capture_last_token([handle.adapter.block(handle.model, layer)]) as captured, torch.inference_mode():
        handle.model(**encode(handle.tokenizer, prompts), logits_to_keep=1, use_cache=False)
    return float(torch.cat(captured[0]).norm(dim=-1).mean())

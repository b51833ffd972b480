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
from dataclasses import dataclass
from typing import Any

import torch

from pytest_steer.methods.base import MethodOutcome, RunContext
from pytest_steer.methods.hooks import HookReport, Intervene, capture_last_token, edits_at, last_token_hooks
from pytest_steer.methods.scoring import TokenCounter, encode, score_interventions
from pytest_steer.methods.search import LayerSearch, PromptSet, Search, accepted_setting, check_replay, common_diagnostics
from pytest_steer.methods.settings import FunctionVectorSettings
from pytest_steer.models.loader import ModelHandle
from pytest_steer.tasks import Pair, Splits
from pytest_steer.tasks.prompts import few_shot_prompt


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
    with capture_last_token(modules, "input") as captured, torch.inference_mode():
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


def patch_heads(
    handle: ModelHandle, means: torch.Tensor, heads: torch.Tensor, reports: dict[int, HookReport] | None = None
) -> Intervene:
    """Intervention k writes head `heads[k]` (= layer * H + head)'s mean into its slice of the o_proj input."""
    a = handle.adapter
    width = a.num_heads * a.head_dim
    head_of_dim = torch.arange(width) // a.head_dim

    def patch(last: torch.Tensor, layer: int, rows: torch.Tensor, intervention: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(len(intervention), width, dtype=torch.bool, device=last.device)
        mask[rows] = head_of_dim.to(last.device).unsqueeze(0) == (heads.to(last.device)[intervention[rows]] % a.num_heads).unsqueeze(1)
        return torch.where(mask, means[layer].reshape(width).to(last.device, last.dtype), last)

    return edits_at(lambda l: a.attn_out(handle.model, l), "input", heads // a.num_heads, patch,
                    {} if reports is None else reports)


def exact_cie(
    handle: ModelHandle, means: torch.Tensor, data: PromptSet, settings: FunctionVectorSettings, counter: TokenCounter,
    layers: list[int] | None = None,
) -> torch.Tensor:
    """Mean over prompts of p(target | head patched with its mean) - p(target): (L, H)."""
    a = handle.adapter
    layers = list(range(a.num_layers)) if layers is None else layers
    heads = torch.tensor([l * a.num_heads + h for l in layers for h in range(a.num_heads)])
    batching = {"batch_size": settings.batch_size, "max_rows": settings.max_rows, "counter": counter,
                "reuse_prefix": settings.reuse_prefix}
    clean = score_interventions(handle, data.prompts, data.targets, 1, None, **batching)
    reports: dict[int, HookReport] = {}
    patched = score_interventions(handle, data.prompts, data.targets, len(heads), patch_heads(handle, means, heads, reports),
                                  unchanged_blocks=(heads // a.num_heads).tolist(), **batching)
    unpatched = [l for l in layers if reports.get(l, HookReport()).calls == 0]
    if unpatched:
        raise RuntimeError(f"head patches on the attention output of blocks {unpatched} never ran")
    effect = (patched.target_logprob.exp() - clean.target_logprob.exp()).mean(dim=0)
    cie = torch.zeros(a.num_layers, a.num_heads)
    cie.view(-1)[heads] = effect
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
        batch = {k: v.to(handle.device) for k, v in encode(handle.tokenizer, [prompt]).items()}
        kept: dict[int, torch.Tensor] = {}

        def keep(i: int, last: torch.Tensor) -> torch.Tensor:
            last.retain_grad()  # the slice is put back unchanged, so its gradient is the activation's
            kept[i] = last
            return last

        with last_token_hooks(modules, "input", keep), torch.enable_grad():
            embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
            out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                        position_ids=batch["position_ids"], logits_to_keep=1, use_cache=False)
            prob = torch.softmax(out.logits[0, -1].float(), dim=-1)[target]
            prob.backward()
        counter.add(batch["attention_mask"])
        for layer, x in kept.items():
            act = x.detach()[0].reshape(a.num_heads, a.head_dim).float().cpu()
            grad = x.grad[0].reshape(a.num_heads, a.head_dim).float().cpu()  # type: ignore[index]
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
            weight = next(proj.parameters())
            placed = torch.zeros(a.num_heads, width)
            for h in range(a.num_heads):
                placed[h, h * a.head_dim : (h + 1) * a.head_dim] = means[layer, h]
            placed, zero = placed.to(weight.device, weight.dtype), torch.zeros(1, width, device=weight.device, dtype=weight.dtype)
            out.append((proj(placed) - proj(zero)).float().cpu())
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
    """One function-vector intervention: add strength * FV(n_heads) at block `layer`."""

    layer: int
    n_heads: int
    strength: float


def add_at_layers(
    handle: ModelHandle, grid: list[GridPoint], vectors: dict[int, torch.Tensor], reports: dict[int, HookReport]
) -> Intervene:
    """Intervention k adds strength_k * FV(n_k) to block layer_k's output at the last token."""
    additions = torch.stack([p.strength * vectors[p.n_heads] for p in grid])

    def add(last: torch.Tensor, _layer: int, rows: torch.Tensor, intervention: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(last)
        delta[rows] = additions.to(last.device)[intervention[rows]].to(last.dtype)
        return last + delta

    layer_of = torch.tensor([p.layer for p in grid])
    return edits_at(lambda l: handle.adapter.block(handle.model, l), "output", layer_of, add, reports)


@dataclass
class Steering:
    """The function vectors per head count and the heads each one sums."""

    vectors: dict[int, torch.Tensor]
    heads: dict[int, list[tuple[int, int]]]


class FunctionVectorMethod(LayerSearch):
    """Function vectors: head attribution (cached), (layer, heads, strength) search on dev, test report."""

    name = "function_vector"
    settings_type = FunctionVectorSettings
    artifact = "heads"
    cached = ("n_mean_prompts", "n_cie_prompts", "n_shots", "cie")

    def extract(self, handle: ModelHandle, splits: Splits, settings: FunctionVectorSettings, counter: TokenCounter,
                context: RunContext) -> dict[str, torch.Tensor]:
        label = "function vectors: mean head activations"
        context.report(label, 0, 2)
        means = mean_head_activations(handle, splits.demos, settings, splits.seed, counter)
        context.report(label, 1, 2)
        data = shuffled_prompts(handle, splits.demos, settings, splits.seed)
        if settings.cie == "exact":
            cie = exact_cie(handle, means, data, settings, counter)
        else:
            cie = attribution_cie(handle, means, data, counter)
        context.report(label, 2, 2)
        return {"mean_activations": means, "cie": cie}

    def grid(self, handle: ModelHandle, layers: list[int], tensors: dict[str, torch.Tensor],
             settings: FunctionVectorSettings, key: dict[str, Any], context: RunContext) -> tuple[list[GridPoint], Steering]:
        a = handle.adapter
        n_values = sorted({min(n, a.num_layers * a.num_heads) for n in settings.heads})
        outputs = head_outputs(handle, tensors["mean_activations"])
        built = {n: function_vector(outputs, tensors["cie"], n) for n in n_values}
        stored, _ = context.cache.get_or_build(
            self.name, {**key, "kind": "function_vector/vectors", "heads": n_values},
            lambda: {f"fv_{n}": vector for n, (vector, _) in built.items()},
        )
        steering = Steering({n: stored[f"fv_{n}"] for n in n_values}, {n: heads for n, (_, heads) in built.items()})
        return [GridPoint(l, n, s) for l in layers for n in n_values for s in settings.strengths], steering

    def intervention(self, handle: ModelHandle, points: list[GridPoint], state: Steering,
                     reports: dict[int, HookReport]) -> Intervene:
        return add_at_layers(handle, points, state.vectors, reports)

    def replay_point(self, handle: ModelHandle, tensors: dict[str, torch.Tensor],
                     chosen: dict[str, Any]) -> tuple[GridPoint, Steering]:
        vector, layer = tensors["function_vector"], accepted_setting(chosen, "layer", int)
        check_replay(handle, vector, layer, "function vector")
        n_heads = accepted_setting(chosen, "heads", int)
        return GridPoint(layer, n_heads, accepted_setting(chosen, "strength", float)), Steering({n_heads: vector}, {})

    def outcome(self, handle: ModelHandle, splits: Splits, settings: FunctionVectorSettings, found: Search,
                state: Steering, tensors: dict[str, torch.Tensor]) -> MethodOutcome:
        a = handle.adapter
        best: GridPoint = found.best
        grid: list[GridPoint] = found.grid
        acc = found.dev_accuracy
        fv = state.vectors[best.n_heads]
        heads = state.heads[best.n_heads]
        notes = ["projection bias excluded: each head contributes o_proj(x) - o_proj(0)"]
        if a.post_attn_out_norm:
            notes.append(
                f"{a.model_type} normalises the attention output after o_proj; the function vector is o_proj(head) "
                "and bypasses that norm"
            )
        return MethodOutcome(
            unsteered=found.unsteered.test,
            steered=found.steered,
            icl=found.unsteered.icl,
            chosen={"layer": best.layer, "heads": best.n_heads, "strength": best.strength,
                    "relative_depth": round(best.layer / a.num_layers, 3)},
            curves={
                "dev_layers": found.layers,
                "dev_accuracy": [float(acc[i]) for i, p in enumerate(grid) if (p.n_heads, p.strength) == (best.n_heads, best.strength)],
                "dev_best_per_layer": [float(max(acc[i] for i, p in enumerate(grid) if p.layer == l)) for l in found.layers],
                **_grid_at_layer(grid, acc, best.layer),
            },
            vectors={"function_vector": fv, "cie": tensors["cie"]},
            vector_metadata={
                "layer": str(best.layer), "heads": str(best.n_heads), "strength": str(best.strength),
                "top_heads": str(heads), "position": "last", "intervention": "add strength * fv to block output",
            },
            diagnostics={
                **common_diagnostics(found),
                "top_heads": [list(h) for h in heads],
                "cie_method": settings.cie,
                "grid_size": len(grid),
                "fv_norm": float(fv.norm()),
                "residual_norm_at_layer": _last_token_residual_norm(handle, found.dev.prompts[: settings.batch_size], best.layer),
                "notes": notes,
            },
            test_items=[p.input for p in splits.test],
        )


def _grid_at_layer(grid: list[GridPoint], acc: Any, layer: int) -> dict[str, list[Any]]:
    """Dev accuracy over (heads, strength) at the chosen layer: rows are head counts, columns strengths."""
    heads = sorted({p.n_heads for p in grid if p.layer == layer})
    strengths = sorted({p.strength for p in grid if p.layer == layer})
    cell = {(p.n_heads, p.strength): float(acc[i]) for i, p in enumerate(grid) if p.layer == layer}
    return {"grid_heads": heads, "grid_strengths": strengths,
            "grid_dev_accuracy": [[cell[(h, s)] for s in strengths] for h in heads]}


def _last_token_residual_norm(handle: ModelHandle, prompts: list[str], layer: int) -> float:
    """Mean norm of block `layer`'s last-token output: the scale lambda * FV competes with."""
    with capture_last_token([handle.adapter.block(handle.model, layer)]) as captured, torch.inference_mode():
        handle.model(**encode(handle.tokenizer, prompts), logits_to_keep=1, use_cache=False)
    return float(torch.cat(captured[0]).norm(dim=-1).mean())

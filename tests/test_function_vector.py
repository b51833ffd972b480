"""Function-vector mechanics on tiny random models: head splitting, CIE patching, vector, hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_steer.methods import load_method
from pytest_steer.methods.base import RunContext
from pytest_steer.methods.function_vector import (
    FunctionVectorMethod, GridPoint, add_at_layers, attribution_cie, exact_cie, function_vector, head_outputs,
    mean_head_activations, patch_heads, shuffled_prompts,
)
from pytest_steer.methods.hooks import capture_last_token
from pytest_steer.methods.scoring import TokenCounter, encode, score_interventions
from pytest_steer.methods.search import PromptSet
from pytest_steer.methods.settings import FunctionVectorSettings
from pytest_steer.models.adapter import resolve_adapter
from pytest_steer.models.loader import ModelHandle
from pytest_steer.storage.tensors import VectorCache
from pytest_steer.tasks import Pair, Task, split_task
from pytest_steer.tasks.prompts import few_shot_prompt

from .conftest import tiny_pairs

PAIRS = tuple(Pair(p["input"], p["output"]) for p in tiny_pairs())
SMALL = FunctionVectorSettings(n_mean_prompts=4, n_cie_prompts=3, n_shots=3, icl_shots=3, heads=(1, 2, 100),
                               strengths=(1.0, 8.0), batch_size=4, max_rows=64)

ARCHS = {
    "llama": {"num_key_value_heads": 2},
    "gemma3_text": {"head_dim": 16, "num_key_value_heads": 1},  # 4 heads x 16 = 64 != hidden 32
    "gpt2": {},  # Conv1D projection with a bias
    "gpt_neox": {},  # dense projection with a bias
}


def _handle(model_type: str, tokenizer) -> ModelHandle:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=256, pad_token_id=0, **ARCHS[model_type],
    )
    model = AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    return ModelHandle(model, tokenizer, resolve_adapter(model), "fp-" + model_type)


@pytest.fixture(scope="module", params=list(ARCHS))
def handle(request, tiny_handle) -> ModelHandle:
    return _handle(request.param, tiny_handle.tokenizer)


def test_mean_activations_split_heads_with_head_dim_from_config(handle: ModelHandle) -> None:
    a = handle.adapter
    counter = TokenCounter()
    means = mean_head_activations(handle, PAIRS[:20], SMALL, 0, counter)
    assert means.shape == (a.num_layers, a.num_heads, a.head_dim)
    assert counter.tokens > 0
    if handle.model.config.model_type == "gemma3_text":
        assert a.num_heads * a.head_dim == 64 != a.hidden_size


def test_mean_activation_is_the_projection_input_at_the_last_token(tiny_handle) -> None:
    a = tiny_handle.adapter
    settings = FunctionVectorSettings(n_mean_prompts=1, n_shots=2)
    means = mean_head_activations(tiny_handle, PAIRS[:10], settings, 5, TokenCounter())
    import random

    from pytest_steer.methods.function_vector import _few_shot_queries

    shots, queries = _few_shot_queries(PAIRS[:10], 1, 2, random.Random("fv-mean-5"))
    modules = [a.attn_out(tiny_handle.model, l) for l in range(a.num_layers)]
    with capture_last_token(modules, "input") as captured, torch.inference_mode():
        tiny_handle.model(**encode(tiny_handle.tokenizer, [few_shot_prompt(shots[0], queries[0].input)]))
    for layer in range(a.num_layers):
        assert torch.allclose(means[layer].reshape(-1), captured[layer][0][0], atol=1e-6)


def _own_activation_means(handle: ModelHandle, data: PromptSet) -> torch.Tensor:
    a = handle.adapter
    modules = [a.attn_out(handle.model, l) for l in range(a.num_layers)]
    with capture_last_token(modules, "input") as captured, torch.inference_mode():
        handle.model(**encode(handle.tokenizer, data.prompts[:1]))
    return torch.stack([c[0][0] for c in captured]).reshape(a.num_layers, a.num_heads, a.head_dim)


def test_patching_a_head_with_its_own_activation_changes_nothing(handle: ModelHandle) -> None:
    data = shuffled_prompts(handle, PAIRS[:20], SMALL, 0)
    one = PromptSet(data.prompts[:1], data.targets[:1])
    means = _own_activation_means(handle, one)
    cie = exact_cie(handle, means, one, SMALL, TokenCounter())
    assert cie.shape == (handle.adapter.num_layers, handle.adapter.num_heads)
    assert torch.allclose(cie, torch.zeros_like(cie), atol=1e-6)
    approx = attribution_cie(handle, means, one, TokenCounter())
    assert torch.allclose(approx, torch.zeros_like(approx), atol=1e-7)


def test_exact_cie_prefix_cache_matches_full_prompts(handle: ModelHandle) -> None:
    data = shuffled_prompts(handle, PAIRS[:20], SMALL, 0)
    means = mean_head_activations(handle, PAIRS[:20], SMALL, 0, TokenCounter()) * 3.0
    fast = exact_cie(handle, means, data, SMALL, TokenCounter())
    slow = exact_cie(handle, means, data, FunctionVectorSettings(**{**SMALL.__dict__, "reuse_prefix": False}), TokenCounter())
    assert torch.allclose(fast, slow, atol=1e-5)
    assert fast.abs().max() > 0  # a patch far from the activation does change p(target)


def test_a_patch_writes_one_heads_slice_at_its_layer_only(tiny_handle) -> None:
    a = tiny_handle.adapter
    means = torch.randn(a.num_layers, a.num_heads, a.head_dim, generator=torch.Generator().manual_seed(0)) * 5
    blocks = a.blocks(tiny_handle.model)
    proj1 = a.attn_out(tiny_handle.model, 1)
    batch = encode(tiny_handle.tokenizer, ["Q: w1\nA:", "Q: w2\nA:"])
    heads = torch.tensor([1 * a.num_heads + 2, 1 * a.num_heads + 0, 2 * a.num_heads + 3])  # (layer, head) as l * H + h
    with torch.inference_mode():
        with capture_last_token(blocks) as clean, capture_last_token([proj1], "input") as clean_in:
            tiny_handle.model(**batch)
        # row 0 gets intervention 0 (layer 1, head 2), row 1 intervention 1 (layer 1, head 0)
        with patch_heads(tiny_handle, means, heads)(torch.tensor([0, 1])), capture_last_token(blocks) as patched, \
                capture_last_token([proj1], "input") as patched_in:
            tiny_handle.model(**batch)
    before = clean_in[0][0].reshape(2, a.num_heads, a.head_dim)
    after = patched_in[0][0].reshape(2, a.num_heads, a.head_dim)
    assert torch.allclose(after[0, 2], means[1, 2]) and torch.allclose(after[1, 0], means[1, 0])
    untouched = [(0, h) for h in range(a.num_heads) if h != 2] + [(1, h) for h in range(a.num_heads) if h != 0]
    for row, h in untouched:  # every other head's slice is the clean activation
        assert torch.equal(after[row, h], before[row, h])
    assert torch.equal(clean[0][0], patched[0][0])  # the block below is untouched
    assert not torch.allclose(clean[1][0], patched[1][0])  # the patched block's output moved


def test_exact_cie_is_the_change_in_target_probability(tiny_handle) -> None:
    """One head's exact CIE equals p(target) patched minus p(target) clean, measured by hand."""
    a = tiny_handle.adapter
    data = shuffled_prompts(tiny_handle, PAIRS[:20], SMALL, 0)
    one = PromptSet(data.prompts[:2], data.targets[:2])
    means = torch.randn(a.num_layers, a.num_heads, a.head_dim, generator=torch.Generator().manual_seed(1)) * 3
    cie = exact_cie(tiny_handle, means, one, SMALL, TokenCounter())
    layer, head = 1, 3
    proj = a.attn_out(tiny_handle.model, layer)

    def patch(_i: int, last: torch.Tensor) -> torch.Tensor:
        out = last.clone().reshape(len(last), a.num_heads, a.head_dim)
        out[:, head] = means[layer, head]
        return out.reshape(len(last), -1)

    from pytest_steer.methods.hooks import last_token_hooks

    effects = []
    for prompt, target in zip(one.prompts, one.targets):
        batch = encode(tiny_handle.tokenizer, [prompt])
        with torch.inference_mode():
            clean = torch.softmax(tiny_handle.model(**batch).logits[0, -1], -1)[target]
            with last_token_hooks([proj], "input", patch):
                patched = torch.softmax(tiny_handle.model(**batch).logits[0, -1], -1)[target]
        effects.append(float(patched - clean))
    assert float(cie[layer, head]) == pytest.approx(sum(effects) / 2, abs=1e-6)


def test_attribution_cie_is_the_first_order_exact_cie(tiny_handle) -> None:
    """For means a small step from the activation, the gradient estimate matches the exact effect,
    and its error shrinks faster than the step (first order)."""
    data = shuffled_prompts(tiny_handle, PAIRS[:20], SMALL, 0)
    one = PromptSet(data.prompts[:1], data.targets[:1])
    own = _own_activation_means(tiny_handle, one)
    direction = torch.randn(own.shape, generator=torch.Generator().manual_seed(2))
    errors = []
    for eps in (1e-2, 1e-3):
        exact = exact_cie(tiny_handle, own + eps * direction, one, SMALL, TokenCounter())
        approx = attribution_cie(tiny_handle, own + eps * direction, one, TokenCounter())
        assert approx.shape == exact.shape and exact.abs().max() > 0
        errors.append(float((approx - exact).abs().max() / exact.abs().max()))
    assert errors[1] < 0.02 and errors[1] < errors[0] / 3
    assert all(p.grad is None for p in tiny_handle.model.parameters())  # no gradients left behind


def test_head_outputs_are_the_projection_of_each_slice_without_bias(handle: ModelHandle) -> None:
    a = handle.adapter
    means = torch.randn(a.num_layers, a.num_heads, a.head_dim)
    outputs = head_outputs(handle, means)
    assert outputs.shape == (a.num_layers, a.num_heads, a.hidden_size)
    for layer in range(a.num_layers):
        proj = a.attn_out(handle.model, layer)
        with torch.inference_mode():
            whole = proj(means[layer].reshape(1, -1)) - proj(torch.zeros(1, a.num_heads * a.head_dim))
        # the heads' outputs add up to the projection of all heads (linearity, bias counted zero times)
        assert torch.allclose(outputs[layer].sum(dim=0), whole[0], atol=1e-5)


def test_function_vector_sums_the_top_heads_by_cie() -> None:
    outputs = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    cie = torch.tensor([[0.1, 0.5, -0.2], [0.5, 0.0, 0.3]])
    vector, heads = function_vector(outputs, cie, 3)
    assert heads == [(0, 1), (1, 0), (1, 2)]  # ties broken by lower layer first
    assert torch.equal(vector, outputs[0, 1] + outputs[1, 0] + outputs[1, 2])


def test_adding_the_vector_fires_only_at_its_layer(tiny_handle) -> None:
    blocks = tiny_handle.adapter.blocks(tiny_handle.model)
    grid = [GridPoint(2, 1, 4.0), GridPoint(0, 1, 1.0)]
    vectors = {1: torch.ones(32)}
    reports: dict = {}
    batch = encode(tiny_handle.tokenizer, ["Q: w1\nA:"])
    with torch.inference_mode():
        with capture_last_token(blocks) as clean:
            tiny_handle.model(**batch)
        with add_at_layers(tiny_handle, grid, vectors, reports)(torch.tensor([0])), capture_last_token(blocks) as steered:
            tiny_handle.model(**batch)
    assert set(reports) == {2} and reports[2].fired_and_changed
    assert torch.equal(clean[1][0], steered[1][0])
    assert torch.allclose(steered[2][0], clean[2][0] + 4.0)


def test_function_vector_run_on_tiny_model(tiny_handle, tmp_path: Path) -> None:
    task = Task("tiny", "pairs", PAIRS, "memory")
    splits = split_task(task, n_dev=8, n_test=10, seed=2)
    context = RunContext(cache=VectorCache(tmp_path), seed=2)
    first = FunctionVectorMethod().run(tiny_handle, task, splits, SMALL, context)
    a = tiny_handle.adapter
    assert first.chosen["heads"] in (1, 2, a.num_layers * a.num_heads)  # 100 is capped at L x H
    assert first.chosen["strength"] in SMALL.strengths
    assert len(first.curves["dev_accuracy"]) == a.num_layers
    assert first.diagnostics["grid_size"] == a.num_layers * 3 * 2
    assert first.diagnostics["cache"]["hit"] is False and first.diagnostics["hook"]["calls"] > 0
    assert first.vectors["cie"].shape == (a.num_layers, a.num_heads)
    assert len(first.diagnostics["top_heads"]) == first.chosen["heads"]
    assert first.icl is not None and first.steered.shape == first.unsteered.shape == first.icl.shape == (10,)
    assert first.diagnostics["cie_method"] == "exact"
    assert first.diagnostics["fv_norm"] == pytest.approx(float(first.vectors["function_vector"].norm()))
    # the dev curve is the chosen (heads, strength) across layers; the chosen point is the best of the whole grid
    best_per_layer, chosen_curve = first.curves["dev_best_per_layer"], first.curves["dev_accuracy"]
    assert all(b >= c for b, c in zip(best_per_layer, chosen_curve, strict=True))
    assert max(best_per_layer) == max(chosen_curve) == chosen_curve[first.chosen["layer"]]
    assert first.test_items == [p.input for p in splits.test]
    # the (heads, strength) grid at the chosen layer, for the report's heatmap
    grid = first.curves["grid_dev_accuracy"]
    assert first.curves["grid_strengths"] == [1.0, 8.0] and len(first.curves["grid_heads"]) == len(grid) == 3
    row = first.curves["grid_heads"].index(first.chosen["heads"])
    column = first.curves["grid_strengths"].index(first.chosen["strength"])
    assert grid[row][column] == chosen_curve[first.chosen["layer"]] == max(max(r) for r in grid)
    second = FunctionVectorMethod().run(tiny_handle, task, splits, SMALL, context)
    assert second.diagnostics["cache"]["hit"] is True
    assert np.array_equal(first.steered, second.steered) and first.chosen == second.chosen
    assert torch.equal(first.vectors["function_vector"], second.vectors["function_vector"])


def test_the_cie_method_is_part_of_the_cache_key(tiny_handle, tmp_path: Path) -> None:
    task = Task("tiny", "pairs", PAIRS, "memory")
    splits = split_task(task, n_dev=8, n_test=10, seed=2)
    context = RunContext(cache=VectorCache(tmp_path), seed=2)
    small = FunctionVectorSettings(**{**SMALL.__dict__, "heads": (1,), "strengths": (1.0,), "layers": (1,)})
    exact = FunctionVectorMethod().run(tiny_handle, task, splits, small, context)
    attribution = FunctionVectorMethod().run(
        tiny_handle, task, splits, FunctionVectorSettings(**{**small.__dict__, "cie": "attribution"}), context)
    assert exact.diagnostics["cache"]["hit"] is False and attribution.diagnostics["cache"]["hit"] is False
    assert exact.diagnostics["cache"]["path"] != attribution.diagnostics["cache"]["path"]
    assert attribution.diagnostics["cie_method"] == "attribution"
    assert not torch.equal(exact.vectors["cie"], attribution.vectors["cie"])
    assert exact.curves["dev_layers"] == [1] and exact.diagnostics["grid_size"] == 1


def test_registry_and_prepare(tiny_task_file: Path) -> None:
    from pytest_steer.tasks import load_task

    method = load_method("function_vector")
    assert isinstance(method, FunctionVectorMethod) and method.settings_type is FunctionVectorSettings
    splits, counts = method.prepare(load_task("tiny", tiny_task_file), 8, 10, 2)
    assert counts == {"demos": 42, "dev": 8, "test": 10} and splits.seed == 2


def test_blocks_below_the_edited_layer_are_reused_with_the_same_numbers(handle: ModelHandle) -> None:
    """Every architecture: reusing the unsteered outputs of the blocks below each intervention's layer
    gives the numbers of running every block for every row, and puts the blocks back afterwards."""
    a = handle.adapter
    grid = [GridPoint(l, n, s) for l in range(a.num_layers) for n in (1, 2) for s in (1.0, 8.0)]
    vectors = {n: torch.randn(a.hidden_size, generator=torch.Generator().manual_seed(n)) for n in (1, 2)}
    data = PromptSet.zero_shot(handle, PAIRS[:6])
    runs = []
    for unchanged in (None, [p.layer + 1 for p in grid]):
        counter, reports = TokenCounter(), {}
        scores = score_interventions(handle, data.prompts, data.targets, len(grid), add_at_layers(handle, grid, vectors, reports),
                                     batch_size=4, max_rows=10, counter=counter, unchanged_blocks=unchanged)
        assert all(reports[l].fired_and_changed for l in range(a.num_layers))
        runs.append((scores, counter))
    (plain, plain_counter), (reused, reused_counter) = runs
    assert torch.equal(plain.top1, reused.top1)
    assert torch.allclose(plain.target_logprob, reused.target_logprob, atol=1e-5)
    assert plain_counter.reused_block_tokens == 0 < reused_counter.reused_block_tokens
    assert all("forward" not in block.__dict__ for block in a.blocks(handle.model))

"""Tests for pytest_steer.models.adapter on tiny randomly initialised models."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from pytest_steer.models.adapter import (  # noqa: E402
    AdapterError,
    ArchitectureAdapter,
    ArchitectureOverride,
    resolve_adapter,
)

VOCAB = 128
TOKENS = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, **TOKENS)


@dataclass(frozen=True)
class Case:
    """One tiny architecture and the layout the adapter should find for it."""

    model_type: str
    kwargs: dict[str, Any]
    blocks: str
    attn_out: str
    final_norm: str
    heads: int
    head_dim: int
    hidden: int = 32
    post_norm: bool = False


CASES = [
    Case("llama", dict(DECODER, num_key_value_heads=2), "model.layers", "self_attn.o_proj", "model.norm", 4, 8),
    Case("mistral", dict(DECODER, num_key_value_heads=2), "model.layers", "self_attn.o_proj", "model.norm", 4, 8),
    Case("qwen2", dict(DECODER, num_key_value_heads=2), "model.layers", "self_attn.o_proj", "model.norm", 4, 8),
    Case("qwen3", dict(DECODER, num_key_value_heads=2, head_dim=8), "model.layers", "self_attn.o_proj", "model.norm", 4, 8),
    Case("gemma", dict(DECODER, num_key_value_heads=1, head_dim=8), "model.layers", "self_attn.o_proj", "model.norm", 4, 8),
    Case(
        "gemma2",
        dict(DECODER, num_key_value_heads=2, head_dim=8),
        "model.layers", "self_attn.o_proj", "model.norm", 4, 8, post_norm=True,
    ),
    # heads * head_dim (64) != hidden (32), like Gemma 3 270M (4 x 256 vs 640).
    Case(
        "gemma3_text",
        dict(DECODER, num_key_value_heads=1, head_dim=16),
        "model.layers", "self_attn.o_proj", "model.norm", 4, 16, post_norm=True,
    ),
    Case("phi3", dict(DECODER, num_key_value_heads=4), "model.layers", "self_attn.o_proj", "model.norm", 4, 8),
    Case(
        "olmo2",
        dict(DECODER, num_key_value_heads=4),
        "model.layers", "self_attn.o_proj", "model.norm", 4, 8, post_norm=True,
    ),
    Case("gpt2", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, **TOKENS), "transformer.h", "attn.c_proj", "transformer.ln_f", 4, 8),
    Case("gpt_neox", DECODER, "gpt_neox.layers", "attention.dense", "gpt_neox.final_layer_norm", 4, 8),
    Case(
        "falcon",
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **TOKENS),
        "transformer.h", "self_attention.dense", "transformer.ln_f", 4, 8,
    ),
    Case(
        "gptj",
        dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, rotary_dim=4, **TOKENS),
        "transformer.h", "attn.out_proj", "transformer.ln_f", 4, 8,
    ),
    Case(
        "opt",
        dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=32,
             max_position_embeddings=64, **TOKENS),
        "model.decoder.layers", "self_attn.out_proj", "model.decoder.final_layer_norm", 4, 8,
    ),
    # Multimodal Gemma 3 (Gemma3ForConditionalGeneration): geometry lives in text_config.
    Case(
        "gemma3",
        dict(
            text_config=dict(DECODER, num_key_value_heads=1, head_dim=16),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=28, patch_size=14),
            mm_tokens_per_image=4,
        ),
        "model.language_model.layers", "self_attn.o_proj", "model.language_model.norm", 4, 16, post_norm=True,
    ),
]


def _build(model_type: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(model_type, **kwargs)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.model_type)
def case_model(request: pytest.FixtureRequest) -> tuple[Case, torch.nn.Module]:
    case: Case = request.param
    return case, _build(case.model_type, case.kwargs)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return _build("llama", dict(DECODER, num_key_value_heads=2))


def _attn_input_widths(model: torch.nn.Module, adapter: ArchitectureAdapter) -> list[int]:
    """Run a forward pass and record the last dim of every attn_out input."""
    widths: list[int] = []
    handles = [
        adapter.attn_out(model, i).register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[-1]))
        for i in range(adapter.num_layers)
    ]
    try:
        with torch.no_grad():
            model(input_ids=torch.randint(3, 100, (1, 5)))
    finally:
        for h in handles:
            h.remove()
    return widths


def test_registry_layout(case_model: tuple[Case, torch.nn.Module]) -> None:
    case, model = case_model
    adapter = resolve_adapter(model)
    assert adapter.source == "registry"
    assert adapter.model_type == case.model_type
    assert adapter.blocks_path == case.blocks
    assert adapter.attn_out_path == case.attn_out
    assert adapter.final_norm_path == case.final_norm
    assert adapter.num_layers == 2 == len(adapter.blocks(model))
    assert adapter.num_heads == case.heads
    assert adapter.head_dim == case.head_dim
    assert adapter.hidden_size == case.hidden
    assert adapter.post_attn_out_norm is case.post_norm
    assert adapter.block(model, -1) is adapter.blocks(model)[1]
    assert isinstance(adapter.final_norm(model), torch.nn.Module)


def test_attn_out_input_is_concatenated_heads(case_model: tuple[Case, torch.nn.Module]) -> None:
    case, model = case_model
    adapter = resolve_adapter(model)
    widths = _attn_input_widths(model, adapter)
    assert widths == [case.heads * case.head_dim] * 2


def test_unembedding_shape(case_model: tuple[Case, torch.nn.Module]) -> None:
    case, model = case_model
    adapter = resolve_adapter(model)
    weight = adapter.unembedding(model)
    vocab = model.config.get_text_config().vocab_size
    assert tuple(weight.shape) == (vocab, case.hidden)


def test_describe_is_json(case_model: tuple[Case, torch.nn.Module]) -> None:
    _, model = case_model
    summary = resolve_adapter(model).describe()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["source"] == "registry"


def test_heads_times_head_dim_differs_from_hidden() -> None:
    model = _build("gemma3_text", dict(DECODER, num_key_value_heads=1, head_dim=16))
    adapter = resolve_adapter(model)
    assert adapter.num_heads * adapter.head_dim == 64 != adapter.hidden_size == 32


def test_structural_guess_on_unknown_model_type(llama: torch.nn.Module) -> None:
    mystery = copy.deepcopy(llama)
    mystery.config.model_type = "mystery"
    adapter = resolve_adapter(mystery)
    reference = resolve_adapter(llama)
    assert adapter.source == "structural"
    assert adapter.model_type == "mystery"
    assert (adapter.blocks_path, adapter.attn_out_path, adapter.final_norm_path) == (
        reference.blocks_path,
        reference.attn_out_path,
        reference.final_norm_path,
    )
    assert (adapter.num_layers, adapter.num_heads, adapter.head_dim) == (2, 4, 8)
    assert adapter.post_attn_out_norm is False


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "falcon", "opt"])
def test_structural_guess_matches_registry(model_type: str) -> None:
    case = next(c for c in CASES if c.model_type == model_type)
    model = _build(case.model_type, case.kwargs)
    model.config.model_type = "mystery"
    adapter = resolve_adapter(model)
    assert adapter.source == "structural"
    assert (adapter.blocks_path, adapter.attn_out_path, adapter.final_norm_path) == (
        case.blocks,
        case.attn_out,
        case.final_norm,
    )


def test_override_wins(llama: torch.nn.Module) -> None:
    override = ArchitectureOverride(attn_out="self_attn.o_proj", final_norm="model.layers.1.input_layernorm")
    adapter = resolve_adapter(llama, override)
    assert adapter.source == "override"
    assert adapter.final_norm_path == "model.layers.1.input_layernorm"
    assert adapter.final_norm(llama) is llama.model.layers[1].input_layernorm
    assert adapter.blocks_path == "model.layers"  # filled in from the registry
    assert adapter.attn_out(llama, 0) is llama.model.layers[0].self_attn.o_proj


def test_override_geometry(llama: torch.nn.Module) -> None:
    adapter = resolve_adapter(llama, ArchitectureOverride(num_heads=2, head_dim=16))
    assert adapter.source == "override"
    assert (adapter.num_heads, adapter.head_dim) == (2, 16)


def test_override_geometry_inconsistent_with_module_raises(llama: torch.nn.Module) -> None:
    with pytest.raises(AdapterError, match="num_heads"):
        resolve_adapter(llama, ArchitectureOverride(num_heads=4, head_dim=16))


def test_empty_override_is_ignored(llama: torch.nn.Module) -> None:
    assert resolve_adapter(llama, ArchitectureOverride()).source == "registry"


@pytest.mark.parametrize(
    "override, bad",
    [
        (ArchitectureOverride(blocks="model.decoder_blocks"), "model.decoder_blocks"),
        (ArchitectureOverride(attn_out="self_attn.out_projection"), "self_attn.out_projection"),
        (ArchitectureOverride(final_norm="model.final_norm"), "model.final_norm"),
        (ArchitectureOverride(blocks="model.embed_tokens"), "model.embed_tokens"),
    ],
)
def test_bad_override_path_raises(llama: torch.nn.Module, override: ArchitectureOverride, bad: str) -> None:
    with pytest.raises(AdapterError) as info:
        resolve_adapter(llama, override)
    assert bad in str(info.value)
    assert "llama" in str(info.value)


def test_unresolvable_model_lists_attempts(llama: torch.nn.Module) -> None:
    broken = copy.deepcopy(llama)
    broken.config.num_hidden_layers = 5
    with pytest.raises(AdapterError) as info:
        resolve_adapter(broken)
    message = str(info.value)
    assert "llama" in message
    assert "model.layers" in message  # the registry attempt
    assert "structural" in message


def test_layer_index_out_of_range(llama: torch.nn.Module) -> None:
    adapter = resolve_adapter(llama)
    with pytest.raises(IndexError):
        adapter.block(llama, 2)


def test_from_mapping_roundtrip() -> None:
    override = ArchitectureOverride.from_mapping(
        {"blocks": "model.layers", "attn_out": "self_attn.o_proj", "num_heads": 4, "head_dim": None}, "steer.toml"
    )
    assert override == ArchitectureOverride(blocks="model.layers", attn_out="self_attn.o_proj", num_heads=4)


def test_from_mapping_rejects_unknown_key() -> None:
    with pytest.raises(AdapterError) as info:
        ArchitectureOverride.from_mapping({"blocks": "model.layers", "attn_output": "x"}, "[steer.architecture]")
    assert "[steer.architecture]" in str(info.value)
    assert "attn_output" in str(info.value)


@pytest.mark.parametrize(
    "data",
    [{"num_heads": "4"}, {"head_dim": 0}, {"num_heads": True}, {"blocks": 3}, {"final_norm": ""}],
)
def test_from_mapping_rejects_wrong_types(data: dict[str, Any]) -> None:
    with pytest.raises(AdapterError, match="where.toml"):
        ArchitectureOverride.from_mapping(data, "where.toml")


def test_spec_records_are_the_ones_the_adapter_uses() -> None:
    """`models.spec` holds the torch-free records; the adapter re-exports the same classes, so an
    `AdapterError` raised while resolving is caught by code that imported it from either module."""
    from pytest_steer.models import spec

    assert spec.AdapterError is AdapterError and spec.ArchitectureOverride is ArchitectureOverride
    with pytest.raises(spec.AdapterError):
        ArchitectureOverride.from_mapping({"num_heads": 0}, "w")

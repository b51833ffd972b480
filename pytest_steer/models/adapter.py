"""Architecture adapter: where the parts steering methods need live in a causal LM.

For a Hugging Face causal language model this module locates the decoder
blocks, the attention output projection of each block (the module whose
*input* is the concatenation of the per-head attention outputs), the final
norm and the unembedding matrix, and reads the head geometry from the config.

Three mechanisms can supply the layout, tried in this order:

* ``override`` -- an :class:`ArchitectureOverride` given by the user; its
  non-``None`` fields win, the rest are filled in by the mechanisms below.
* ``registry`` -- known layouts keyed by ``config.model_type``.
* ``structural`` -- a guess from the module tree (largest ``ModuleList`` with
  one entry per layer, an ``o_proj``/``out_proj``/``c_proj``/``dense`` under an
  attention-like child, a ``*Norm*`` sibling of the block list).

Every path, whatever its source, is checked against the actual model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from pytest_steer.models.spec import AdapterError, ArchitectureOverride

__all__ = [
    "AdapterError",
    "ArchitectureAdapter",
    "ArchitectureOverride",
    "resolve_adapter",
]


@dataclass(frozen=True)
class _Layout:
    """One candidate layout: dotted paths for blocks, attn-out and final norm."""

    blocks: str
    attn_out: str
    final_norm: str | None


_LLAMA_LIKE = (_Layout("model.layers", "self_attn.o_proj", "model.norm"),)

# model_type -> candidate layouts, tried in order (first that validates wins).
_REGISTRY: dict[str, tuple[_Layout, ...]] = {
    **{
        name: _LLAMA_LIKE
        for name in (
            "llama",
            "mistral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi3",
            "olmo",
            "olmo2",
            "olmo3",
            "olmoe",
            "granite",
            "smollm3",
            "starcoder2",
            "stablelm",
            "cohere",
        )
    },
    # Gemma 3 multimodal (Gemma3ForConditionalGeneration); the later entries
    # cover older transformers layouts and a bare text model under a gemma3 config.
    "gemma3": (
        _Layout("model.language_model.layers", "self_attn.o_proj", "model.language_model.norm"),
        _Layout("language_model.model.layers", "self_attn.o_proj", "language_model.model.norm"),
        _Layout("model.layers", "self_attn.o_proj", "model.norm"),
    ),
    "phi": (_Layout("model.layers", "self_attn.dense", "model.final_layernorm"),),
    "gpt2": (_Layout("transformer.h", "attn.c_proj", "transformer.ln_f"),),
    "gptj": (_Layout("transformer.h", "attn.out_proj", "transformer.ln_f"),),
    "falcon": (_Layout("transformer.h", "self_attention.dense", "transformer.ln_f"),),
    "gpt_neox": (_Layout("gpt_neox.layers", "attention.dense", "gpt_neox.final_layer_norm"),),
    "opt": (_Layout("model.decoder.layers", "self_attn.out_proj", "model.decoder.final_layer_norm"),),
}

# Families whose decoder block normalises the attention output (after the
# output projection, before the residual add).
_POST_ATTN_OUT_NORM: frozenset[str] = frozenset({"gemma2", "gemma3", "gemma3_text", "olmo2", "olmo3"})

_ATTN_OUT_SUFFIXES = ("o_proj", "out_proj", "c_proj", "dense")


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Resolved layout of one model; methods look the modules up on a model."""

    model_type: str
    source: str
    blocks_path: str
    attn_out_path: str
    final_norm_path: str | None
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    post_attn_out_norm: bool

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The decoder blocks, in order."""
        return list(_lookup(model, self.blocks_path))

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        """Decoder block ``layer`` (negative indices count from the end)."""
        return self.blocks(model)[self._index(layer)]

    def attn_out(self, model: nn.Module, layer: int) -> nn.Module:
        """Attention output projection of block ``layer``; its input has width ``num_heads * head_dim``."""
        return _lookup(self.block(model, layer), self.attn_out_path)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        """The norm applied before the unembedding, or ``None`` if the model has none."""
        if self.final_norm_path is None:
            return None
        return _lookup(model, self.final_norm_path)

    def unembedding(self, model: nn.Module) -> torch.Tensor:
        """The unembedding weight, shape ``(vocab, hidden_size)``."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        weight = getattr(head, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise AdapterError(f"{self.model_type}: model has no output embedding weight (get_output_embeddings())")
        if weight.ndim != 2 or weight.shape[1] != self.hidden_size:
            raise AdapterError(
                f"{self.model_type}: output embedding weight has shape {tuple(weight.shape)}, "
                f"expected (vocab, {self.hidden_size})"
            )
        return weight

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def _index(self, layer: int) -> int:
        if not -self.num_layers <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a model with {self.num_layers} layers")
        return layer % self.num_layers


class _PathError(Exception):
    """A dotted path does not lead to a module."""


def _lookup(root: nn.Module, path: str) -> nn.Module:
    """Walk a dotted path from ``root``; raise ``AdapterError`` if it is not a module."""
    try:
        return _walk(root, path)
    except _PathError as exc:
        raise AdapterError(f"path {path!r}: {exc}") from None


def _walk(root: nn.Module, path: str, *, allow_none: bool = False) -> nn.Module | None:
    obj: Any = root
    done: list[str] = []
    for part in path.split(".") if path else []:
        if isinstance(obj, (nn.ModuleList, nn.Sequential)) and part.lstrip("-").isdigit():
            try:
                obj = obj[int(part)]
            except IndexError:
                raise _PathError(f"index {part} out of range at {'.'.join(done) or '<root>'}") from None
        elif isinstance(obj, nn.Module) and hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            raise _PathError(f"no attribute {part!r} on {'.'.join(done) or '<root>'} ({type(obj).__name__})")
        done.append(part)
        if obj is None:
            if allow_none and len(done) == len(path.split(".")):
                return None
            raise _PathError(f"{'.'.join(done)} is None")
    if not isinstance(obj, nn.Module):
        raise _PathError(f"resolves to {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _cfg_int(cfg: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _text_config(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise AdapterError(f"{type(model).__name__}: model has no .config")
    get_text = getattr(cfg, "get_text_config", None)
    if callable(get_text):
        try:
            return get_text()
        except Exception:  # pragma: no cover - exotic configs
            return cfg
    return cfg


def _input_width(module: nn.Module) -> int | None:
    """Input features of a projection module, when it can be read off the module."""
    width = getattr(module, "in_features", None)
    if isinstance(width, int):
        return width
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2:
        return int(weight.shape[0])  # transformers' Conv1D stores (in, out)
    return None


def _check_blocks(model: nn.Module, path: str, num_layers: int) -> nn.Module:
    try:
        blocks = _walk(model, path)
    except _PathError as exc:
        raise AdapterError(f"blocks {path!r}: {exc}") from None
    if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
        raise AdapterError(f"blocks {path!r}: is a {type(blocks).__name__}, not a ModuleList")
    if len(blocks) != num_layers:
        raise AdapterError(f"blocks {path!r}: has {len(blocks)} entries, config says {num_layers} layers")
    return blocks


def _check_attn_out(blocks: nn.Module, path: str, width: int) -> None:
    for i, block in enumerate(blocks):
        try:
            module = _walk(block, path)
        except _PathError as exc:
            raise AdapterError(f"attn_out {path!r} in block {i}: {exc}") from None
        got = _input_width(module)
        if got is not None and got != width:
            raise AdapterError(
                f"attn_out {path!r} in block {i}: input width {got} != num_heads*head_dim = {width}"
            )


def _check_final_norm(model: nn.Module, path: str) -> str | None:
    """Validate a final-norm path; ``None`` if the attribute exists but is ``None``."""
    try:
        found = _walk(model, path, allow_none=True)
    except _PathError as exc:
        raise AdapterError(f"final_norm {path!r}: {exc}") from None
    return None if found is None else path


def _guess_blocks(model: nn.Module, num_layers: int) -> str:
    best: tuple[int, str] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and name:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name)
    if best is None:
        raise AdapterError(f"structural: no ModuleList with {num_layers} entries")
    return best[1]


def _guess_attn_out(block: nn.Module) -> str:
    for name, _ in block.named_modules():
        parts = name.split(".")
        if len(parts) < 2 or not name.endswith(_ATTN_OUT_SUFFIXES):
            continue
        if any("attn" in p.lower() or "attention" in p.lower() for p in parts[:-1]):
            return name
    raise AdapterError(
        f"structural: no submodule ending in {'/'.join(_ATTN_OUT_SUFFIXES)} under an attention child of "
        f"{type(block).__name__}"
    )


def _guess_final_norm(model: nn.Module, blocks_path: str) -> str | None:
    parent_path, _, _ = blocks_path.rpartition(".")
    parent = _walk(model, parent_path)
    norms = [n for n, m in parent.named_children() if "Norm" in type(m).__name__]
    if not norms:
        return None
    preferred = [n for n in norms if n in ("norm", "ln_f") or "final" in n]
    name = (preferred or norms)[-1]
    return f"{parent_path}.{name}" if parent_path else name


def _geometry(model: nn.Module, model_type: str, override: ArchitectureOverride) -> tuple[int, int, int, int]:
    cfg = _text_config(model)
    num_layers = _cfg_int(cfg, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    hidden = _cfg_int(cfg, "hidden_size", "n_embd", "d_model", "dim")
    heads = override.num_heads or _cfg_int(cfg, "num_attention_heads", "n_head", "num_heads", "n_heads")
    missing = [
        label
        for label, value in (
            ("num_hidden_layers/n_layer/num_layers", num_layers),
            ("hidden_size/n_embd/d_model", hidden),
            ("num_attention_heads/n_head/num_heads", heads),
        )
        if value is None
    ]
    if missing:
        raise AdapterError(f"{model_type}: config lacks {', '.join(missing)}")
    head_dim = override.head_dim or _cfg_int(cfg, "head_dim")
    if head_dim is None:
        if hidden % heads:
            raise AdapterError(f"{model_type}: no head_dim in config and hidden {hidden} not divisible by {heads} heads")
        head_dim = hidden // heads
    return num_layers, heads, head_dim, hidden  # type: ignore[return-value]


def resolve_adapter(model: nn.Module, override: ArchitectureOverride | None = None) -> ArchitectureAdapter:
    """Find and validate the layout of ``model``; raise :class:`AdapterError` on failure."""
    override = override or ArchitectureOverride()
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or type(model).__name__)
    num_layers, heads, head_dim, hidden = _geometry(model, model_type, override)
    width = heads * head_dim
    post_norm = model_type in _POST_ATTN_OUT_NORM

    def build(source: str, blocks: str, attn_out: str, final_norm: str | None) -> ArchitectureAdapter:
        return ArchitectureAdapter(
            model_type=model_type,
            source=source,
            blocks_path=blocks,
            attn_out_path=attn_out,
            final_norm_path=final_norm,
            num_layers=num_layers,
            num_heads=heads,
            head_dim=head_dim,
            hidden_size=hidden,
            post_attn_out_norm=post_norm,
        )

    tried: list[str] = []

    if not override.is_empty():
        # Override paths are checked strictly: a bad one is an error, never skipped.
        try:
            return build("override", *_resolve_with_override(model, model_type, override, num_layers, width))
        except AdapterError as exc:
            raise AdapterError(f"model_type {model_type!r} with override {override}: {exc}") from None

    for layout in _REGISTRY.get(model_type, ()):
        try:
            blocks = _check_blocks(model, layout.blocks, num_layers)
            _check_attn_out(blocks, layout.attn_out, width)
            final_norm = _check_final_norm(model, layout.final_norm) if layout.final_norm else None
        except AdapterError as exc:
            tried.append(f"registry {exc}")
            continue
        return build("registry", layout.blocks, layout.attn_out, final_norm)
    if model_type not in _REGISTRY:
        tried.append(f"registry: no entry for model_type {model_type!r}")

    try:
        blocks_path = _guess_blocks(model, num_layers)
        blocks = _check_blocks(model, blocks_path, num_layers)
        attn_out = _guess_attn_out(blocks[0])
        _check_attn_out(blocks, attn_out, width)
        final_norm = _guess_final_norm(model, blocks_path)
    except AdapterError as exc:
        tried.append(str(exc) if str(exc).startswith("structural") else f"structural {exc}")
        raise AdapterError(_failure(model_type, tried)) from None
    return build("structural", blocks_path, attn_out, final_norm)


def _resolve_with_override(
    model: nn.Module, model_type: str, override: ArchitectureOverride, num_layers: int, width: int
) -> tuple[str, str, str | None]:
    """Paths for an override: its fields first, then registry, then structural guess."""
    candidates = _REGISTRY.get(model_type, ())
    if override.blocks is not None:
        blocks_path = override.blocks
    else:
        valid = [c.blocks for c in candidates if _is_valid_blocks(model, c.blocks, num_layers)]
        blocks_path = valid[0] if valid else _guess_blocks(model, num_layers)
    blocks = _check_blocks(model, blocks_path, num_layers)
    layout = next((c for c in candidates if c.blocks == blocks_path), None)

    if override.attn_out is not None:
        attn_out = override.attn_out
    elif layout is not None:
        attn_out = layout.attn_out
    else:
        attn_out = _guess_attn_out(blocks[0])
    _check_attn_out(blocks, attn_out, width)

    if override.final_norm is not None:
        final_norm = _check_final_norm(model, override.final_norm)
        if final_norm is None:
            raise AdapterError(f"final_norm {override.final_norm!r} is None")
    elif layout is not None and layout.final_norm is not None:
        final_norm = _check_final_norm(model, layout.final_norm)
    else:
        final_norm = _guess_final_norm(model, blocks_path)
    return blocks_path, attn_out, final_norm


def _is_valid_blocks(model: nn.Module, path: str, num_layers: int) -> bool:
    try:
        _check_blocks(model, path, num_layers)
    except AdapterError:
        return False
    return True


def _failure(model_type: str, tried: list[str]) -> str:
    lines = "\n".join(f"  - {t}" for t in tried)
    return (
        f"cannot resolve the architecture of model_type {model_type!r}; tried:\n{lines}\n"
        "Pass an ArchitectureOverride (blocks / attn_out / final_norm / num_heads / head_dim)."
    )

"""Batched prompt scoring: first-token-of-target accuracy at the last position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pytest_steer.models.loader import ModelHandle


@dataclass
class TokenCounter:
    """Counts the (non-padding) tokens that went through the model: the honest cost measure."""

    tokens: int = 0
    passes: int = 0


def first_target_ids(tokenizer: object, prompts: Sequence[str], targets: Sequence[str]) -> list[int]:
    """The first id the target adds after the prompt, on the ids the model is actually fed."""
    ids = []
    for prompt, target in zip(prompts, targets, strict=True):
        p = tokenizer(prompt)["input_ids"]  # type: ignore[operator]
        full = tokenizer(prompt + target)["input_ids"]  # type: ignore[operator]
        n = 0
        while n < min(len(p), len(full)) and p[n] == full[n]:
            n += 1
        if n >= len(full):
            raise ValueError(f"target {target!r} adds no token after prompt {prompt[-40:]!r}")
        ids.append(int(full[n]))
    return ids


def encode(tokenizer: object, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Left-padded batch with position ids that skip the padding."""
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)  # type: ignore[operator]
    mask = batch["attention_mask"]
    if not bool(mask[:, -1].all()):
        raise RuntimeError("tokenizer must pad on the left so that position -1 is each prompt's last token")
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": position_ids}


def last_logits(
    handle: ModelHandle, prompts: Sequence[str], batch_size: int, counter: TokenCounter | None = None
) -> torch.Tensor:
    """Float32 logits at the last position of every prompt, shape (len(prompts), vocab)."""
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = encode(handle.tokenizer, prompts[start : start + batch_size])
            out = handle.model(**batch, logits_to_keep=1, use_cache=False)
            chunks.append(out.logits[:, -1, :].float())
            if counter is not None:
                counter.tokens += int(batch["attention_mask"].sum())
                counter.passes += 1
    return torch.cat(chunks)


def first_token_correct(
    handle: ModelHandle,
    prompts: Sequence[str],
    target_ids: Sequence[int],
    batch_size: int,
    counter: TokenCounter | None = None,
) -> np.ndarray:
    """1.0 where the target's first token is the argmax at the last position, else 0.0."""
    logits = last_logits(handle, prompts, batch_size, counter)
    top = logits.argmax(dim=-1)
    return (top == torch.tensor(list(target_ids))).to(torch.float64).numpy()

"""Batched prompt scoring at the last position, with many interventions per prompt.

Every intervention of the word-task methods touches only the last token, and the
positions before it cannot see it. So the prompt minus its last token is encoded
once (a KV cache), and the last token is run as a batch with one row per intervention
(an intervention: a layer, head, strength...) on that cache repeated across the batch. `reuse_prefix=False`
runs whole prompts instead; both give the same numbers to float precision.

An intervention at block l leaves blocks below it unchanged. Given how many leading
blocks each intervention leaves unchanged, the last token runs once through every block
unsteered, rows are ordered by that count, and in each batch of rows the leading blocks
that no row changes return their stored outputs instead of computing them again.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from pytest_steer.methods.hooks import Intervene
from pytest_steer.models.loader import ModelHandle



@dataclass
class TokenCounter:
    """Counts the (non-padding) tokens that went through the model: the honest cost measure."""

    tokens: int = 0
    passes: int = 0
    reused_block_tokens: int = 0  # (token, block) pairs whose block output was reused, not computed

    def add(self, mask: torch.Tensor, reused_blocks: int = 0) -> None:
        n = int(mask.sum())
        self.tokens += n
        self.passes += 1
        self.reused_block_tokens += n * reused_blocks


@dataclass
class InterventionScores:
    """Per prompt and intervention: the argmax token and the target's log-probability."""

    top1: torch.Tensor  # (n_prompts, n_interventions) long
    target_logprob: torch.Tensor  # (n_prompts, n_interventions) float32
    choice_logits: torch.Tensor | None = None  # (n_prompts, n_interventions, choices) float32, when asked

    def correct(self, target_ids: Sequence[int]) -> np.ndarray:
        targets = torch.tensor(list(target_ids)).unsqueeze(1)
        return (self.top1 == targets).to(torch.float64).numpy()


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


def cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache`; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _reduce(logits: torch.Tensor, targets: torch.Tensor, logprobs: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and target log-probability in float32 (whatever the weight dtype), back on the CPU; without
    `logprobs` the log-softmax over the vocabulary is skipped (NaN) and the argmax is the same."""
    logits = logits.float()
    if not logprobs:
        return logits.argmax(dim=-1).cpu(), torch.full((len(logits),), float("nan"))
    target_logprob = torch.log_softmax(logits, dim=-1).gather(1, targets.to(logits.device).unsqueeze(1)).squeeze(1)
    return logits.argmax(dim=-1).cpu(), target_logprob.cpu()


def score_interventions(
    handle: ModelHandle,
    prompts: Sequence[str],
    target_ids: Sequence[int],
    n_interventions: int = 1,
    intervene: Intervene | None = None,
    *,
    batch_size: int = 32,
    max_rows: int = 256,
    counter: TokenCounter | None = None,
    reuse_prefix: bool = True,
    unchanged_blocks: Sequence[int] | None = None,
    logprobs: bool = True,
    progress: Callable[[int, int], None] | None = None,
    choice_ids: Sequence[Sequence[int]] | None = None,
) -> InterventionScores:
    """Score every prompt under `n_interventions` interventions.

    `unchanged_blocks[k]`: how many leading blocks intervention k leaves as they are (with
    `reuse_prefix` and several interventions, their outputs are computed once per prompt).
    `logprobs=False`: only the argmax is needed (target log-probabilities are left NaN).
    `progress(done, total)`: called after each batch of prompts.
    `choice_ids[i]`: token ids whose logits (float32) prompt i keeps under every intervention (`choice_logits`).
    """
    model = handle.model
    unchanged = None
    if unchanged_blocks is not None and reuse_prefix and n_interventions > 1:
        unchanged = torch.tensor(list(unchanged_blocks), dtype=torch.long)
        if len(unchanged) != n_interventions:
            raise ValueError(f"unchanged_blocks has {len(unchanged)} entries for {n_interventions} interventions")
    n = len(prompts)
    top1 = torch.empty(n, n_interventions, dtype=torch.long)
    logp = torch.empty(n, n_interventions, dtype=torch.float32)
    targets_all = torch.tensor(list(target_ids), dtype=torch.long)
    choices_all = None if choice_ids is None else torch.tensor([list(c) for c in choice_ids], dtype=torch.long)
    choice_logits = None if choices_all is None else torch.empty(n, n_interventions, choices_all.shape[1])
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = encode(handle.tokenizer, prompts[start : start + batch_size])
            ids, mask, pos = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
            cache = None
            if reuse_prefix:
                if ids.shape[1] < 2:
                    raise ValueError("prompts must have at least two tokens to reuse a prefix cache")
                out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                            use_cache=True, logits_to_keep=1)
                cache = getattr(out, "cache", None) or out.past_key_values
                if counter is not None:
                    counter.add(mask[:, :-1])
            b = ids.shape[0]
            all_rows = torch.arange(b).repeat_interleave(n_interventions)
            all_interventions = torch.arange(n_interventions).repeat(b)
            stored: BlockOutputs | None = None
            if unchanged is not None:
                order = torch.argsort(unchanged[all_interventions] * b + all_rows, stable=True)
                all_rows, all_interventions = all_rows[order], all_interventions[order]
                last = {"input_ids": ids[:, -1:], "attention_mask": mask, "position_ids": pos[:, -1:],
                        cache_kwarg(model): copy.deepcopy(cache), "use_cache": True}
                stored = block_outputs(model, handle.adapter.blocks(model), last)
                if counter is not None:
                    counter.add(mask[:, -1:])
            for sub in range(0, len(all_rows), max_rows):
                rows = all_rows[sub : sub + max_rows]
                intervention = all_interventions[sub : sub + max_rows]
                hooks = intervene(intervention) if intervene is not None else nullcontext()
                reused = int(unchanged[intervention].min()) if unchanged is not None else 0
                skip = stored.reuse(reused, rows) if stored is not None and reused > 0 else nullcontext()
                if reuse_prefix:
                    row_cache = copy.deepcopy(cache)
                    row_cache.batch_select_indices(rows)
                    inputs = {"input_ids": ids[rows, -1:], "attention_mask": mask[rows], "position_ids": pos[rows, -1:],
                              cache_kwarg(model): row_cache, "use_cache": True}
                    cost = mask[rows, -1:]
                else:
                    inputs = {"input_ids": ids[rows], "attention_mask": mask[rows], "position_ids": pos[rows], "use_cache": False}
                    cost = mask[rows]
                with skip, hooks:
                    out = model(**inputs, logits_to_keep=1)
                if counter is not None:
                    counter.add(cost, reused)
                t, lp = _reduce(out.logits[:, -1, :], targets_all[start + rows], logprobs)
                top1[start + rows, intervention] = t
                logp[start + rows, intervention] = lp
                if choice_logits is not None and choices_all is not None:
                    picked = out.logits[:, -1, :].float().gather(1, choices_all[start + rows].to(out.logits.device))
                    choice_logits[start + rows, intervention] = picked.cpu()
            if progress is not None:
                progress(min(start + batch_size, n), n)
    return InterventionScores(top1=top1, target_logprob=logp, choice_logits=choice_logits)


@dataclass
class BlockOutputs:
    """Every block's output at the last position of one unsteered pass, one row per prompt."""

    blocks: list[torch.nn.Module]
    outputs: list[torch.Tensor]  # per block: (prompts, 1, hidden), as the block returned it
    as_tuple: bool  # older transformers return (hidden, ...) from a block

    @contextmanager
    def reuse(self, count: int, prompt_of_row: torch.Tensor) -> Iterator[None]:
        """Blocks 0..count-1 return their stored output for each row's prompt instead of running."""
        saved: list[tuple[torch.nn.Module, object]] = []
        try:
            for block, output in zip(self.blocks[:count], self.outputs):
                saved.append((block, block.__dict__.get("forward")))  # accelerate may have wrapped it
                block.forward = _constant(output[prompt_of_row.to(output.device)], self.as_tuple)
            yield
        finally:
            for block, forward in saved:
                if forward is None:
                    del block.forward
                else:
                    block.forward = forward


def _constant(hidden: torch.Tensor, as_tuple: bool) -> object:
    def forward(*_args: object, **_kwargs: object) -> object:
        return (hidden,) if as_tuple else hidden
    return forward


def block_outputs(model: torch.nn.Module, blocks: list[torch.nn.Module], inputs: dict[str, object]) -> BlockOutputs:
    """Run `inputs` once, keeping every block's output at the last position."""
    outputs: list[torch.Tensor] = []
    as_tuple = [False]

    def keep(_module: torch.nn.Module, _inputs: object, output: object) -> None:
        as_tuple[0] = isinstance(output, tuple)
        hidden = output[0] if isinstance(output, tuple) else output  # type: ignore[index]
        outputs.append(hidden[:, -1:, :].detach().clone())  # type: ignore[index]

    handles = [block.register_forward_hook(keep) for block in blocks]
    try:
        model(**inputs, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return BlockOutputs(blocks, outputs, as_tuple[0])

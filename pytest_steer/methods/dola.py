"""DoLa (Chuang et al. 2024) scoring of candidate continuations, as the reliability study ran it.

Scoring only (not yet a suite method): for one prompt and its candidate answers, the
baseline score is the sum of final-layer log-probs of the answer tokens; the DoLa score
contrasts the mature (last) layer with the premature layer of largest Jensen-Shannon
divergence among the bucket's candidates, per answer position. The prompt is encoded
once; the answers run as one batch on its cache; layer logits are computed only for the
bucket's layers and only at answer positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pytest_steer.methods.scoring import _cache_kwarg
from pytest_steer.models.loader import ModelHandle

BUCKETS = {"lower": (0.0, 0.5), "upper": (0.5, 1.0), "full": (0.0, 1.0),
           "q1": (0.0, 0.25), "q2": (0.25, 0.5), "q3": (0.5, 0.75), "q4": (0.75, 1.0)}


@dataclass(frozen=True)
class DolaSettings:
    bucket: str | tuple[int, ...] = "lower"
    post_softmax: bool = True
    alpha: float = 0.1
    premature_norm: bool = False  # the paper's choice: no norm on premature layers


@dataclass
class AnswerScores:
    """Per answer: baseline and DoLa scores, and the premature layer chosen at each answer token."""

    baseline: list[float]
    dola: list[float]
    premature: list[list[int]]


def candidate_layers(bucket: str | tuple[int, ...], num_layers: int) -> list[int]:
    """`range(int(b0 L), int(b1 L) + 1, 2)` over hidden-state indices, the mature layer L excluded."""
    if not isinstance(bucket, str):
        layers = list(bucket)
    elif bucket in BUCKETS:
        b0, b1 = BUCKETS[bucket]
        layers = list(range(int(b0 * num_layers), int(b1 * num_layers) + 1, 2))
    else:
        raise ValueError(f"unknown bucket {bucket!r}: expected one of {', '.join(BUCKETS)} or a list of layers")
    layers = [l for l in layers if l != num_layers]
    if not layers or not all(0 <= l < num_layers for l in layers):
        raise ValueError(f"bucket {bucket!r} gives no valid premature layer for a model with {num_layers} layers")
    return layers


def jsd(mature_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between softmax(mature) (..., V) and softmax(premature) (C, ..., V)."""
    log_q_n = torch.log_softmax(mature_logits, dim=-1)
    log_q_j = torch.log_softmax(premature_logits, dim=-1)
    log_m = torch.logaddexp(log_q_n, log_q_j) - math.log(2.0)
    kl_n = (log_q_n.exp() * (log_q_n - log_m)).sum(-1)
    kl_j = (log_q_j.exp() * (log_q_j - log_m)).sum(-1)
    return (kl_n + kl_j) / 2


def contrast(mature_logits: torch.Tensor, premature_logits: torch.Tensor, settings: DolaSettings) -> torch.Tensor:
    """DoLa's next-token scores: log-softmax contrast, plausibility mask, optional post-softmax."""
    log_n = torch.log_softmax(mature_logits, dim=-1)
    scores = log_n - torch.log_softmax(premature_logits, dim=-1)
    if settings.post_softmax:
        scores = torch.log_softmax(scores, dim=-1)
    keep = log_n >= log_n.max(dim=-1, keepdim=True).values + math.log(settings.alpha)
    return torch.where(keep, scores, torch.full_like(scores, -1000.0))


def _answer_ids(tokenizer: object, prompt: str, answers: list[str]) -> tuple[list[list[int]], list[int]]:
    fulls, starts = [], []
    prompt_ids = tokenizer(prompt)["input_ids"]  # type: ignore[operator]
    for answer in answers:
        full = tokenizer(prompt + answer)["input_ids"]  # type: ignore[operator]
        n = 0
        while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
            n += 1
        if n >= len(full) or n == 0:
            raise ValueError(f"answer {answer!r} adds no token after the prompt, or the prompt has no shared prefix")
        fulls.append(full)
        starts.append(n)
    return fulls, starts


def score_answers(handle: ModelHandle, prompt: str, answers: list[str], settings: DolaSettings) -> AnswerScores:
    """Baseline and DoLa scores of each answer as a continuation of `prompt`."""
    a = handle.adapter
    model = handle.model
    fulls, starts = _answer_ids(handle.tokenizer, prompt, answers)
    shared = min(starts)  # tokens every answer shares with the prompt: encoded once
    prefix = torch.tensor([fulls[0][:shared]])
    layers = candidate_layers(settings.bucket, a.num_layers)
    unembed = a.unembedding(model)
    norm = a.final_norm(model) if settings.premature_norm else None
    pad = handle.tokenizer.pad_token_id  # type: ignore[attr-defined]
    rests = [f[shared:] for f in fulls]
    width = max(len(r) for r in rests)
    rest_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rests])
    rest_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rests])
    n = len(answers)
    with torch.inference_mode():
        first = model(input_ids=prefix, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        cache = getattr(first, "cache", None) or first.past_key_values
        cache.batch_repeat_interleave(n)
        second = model(
            input_ids=rest_ids, attention_mask=torch.cat([torch.ones(n, shared, dtype=torch.long), rest_mask], dim=1),
            position_ids=(shared + torch.arange(width)).unsqueeze(0).expand(n, -1), use_cache=True,
            output_hidden_states=True, **{_cache_kwarg(model): cache},
        )
        baseline, dola, premature = [], [], []
        for i, full in enumerate(fulls):
            # hidden index k predicts the token at absolute position shared + k (k = 0 is the prefix's last token)
            ks = torch.arange(starts[i] - shared, len(full) - shared)
            targets = torch.tensor(full[starts[i] :])

            def states(j: int, ks: torch.Tensor = ks, i: int = i) -> torch.Tensor:
                seq = torch.cat([first.hidden_states[j][0, -1:], second.hidden_states[j][i]], dim=0)
                return seq[ks]

            mature = torch.cat([first.logits[0, -1:], second.logits[i]], dim=0)[ks].float()
            stack = []
            for j in layers:
                h = states(j)
                if norm is not None:
                    h = norm(h)
                stack.append((h @ unembed.T).float())
            premature_logits = torch.stack(stack)  # (C, T, V)
            divergence = jsd(mature.unsqueeze(0), premature_logits)  # (C, T)
            choice = divergence.argmax(dim=0)  # first candidate wins ties
            chosen = premature_logits[choice, torch.arange(len(ks))]
            f = contrast(mature, chosen, settings)
            rows = torch.arange(len(ks))
            baseline.append(float(torch.log_softmax(mature, dim=-1)[rows, targets].sum()))
            dola.append(float(f[rows, targets].sum()))
            premature.append([layers[c] for c in choice.tolist()])
    return AnswerScores(baseline, dola, premature)


@dataclass(frozen=True)
class MCResult:
    mc1: float
    mc2: float
    mc3: float


def mc_metrics(true_scores: list[float], false_scores: list[float], best_index: int = 0) -> MCResult:
    """TruthfulQA MC1 (best true answer strictly above every false), MC2 (normalised true mass), MC3."""
    top_false = max(false_scores)
    mc1 = float(true_scores[best_index] > top_false)
    mc3 = sum(s > top_false for s in true_scores) / len(true_scores)
    scores = torch.tensor(true_scores + false_scores, dtype=torch.float64)
    probs = torch.softmax(scores, dim=0)  # exp(s) / sum exp(s): shift-invariant, no underflow
    mc2 = float(probs[: len(true_scores)].sum())
    return MCResult(mc1, mc2, float(mc3))


def completion_correct(true_score: float, false_scores: list[float]) -> float:
    """FACTOR-style: correct when the true continuation scores at least every contradiction (ties count)."""
    return float(all(true_score >= s for s in false_scores))

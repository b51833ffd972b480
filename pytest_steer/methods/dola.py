"""DoLa (Chuang et al. 2024) scoring of candidate continuations, as the reliability study ran it.

For one prompt and its candidate answers, the baseline score is the sum of final-layer log-probs of the answer tokens; the DoLa score
contrasts the mature (last) layer with the premature layer of largest Jensen-Shannon
divergence among the bucket's candidates, per answer position. The prompt is encoded
once; the answers run as one batch on its cache; layer logits are computed only for the
bucket's layers and only at answer positions.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from pytest_steer.methods.scoring import _cache_kwarg
from pytest_steer.models.loader import ModelHandle
from pytest_steer.settings import SettingsError

BUCKETS = {"lower": (0.0, 0.5), "upper": (0.5, 1.0), "full": (0.0, 1.0),
           "q1": (0.0, 0.25), "q2": (0.25, 0.5), "q3": (0.5, 0.75), "q4": (0.75, 1.0)}


# Unnormalised residuals of some models (Gemma 3) give near one-hot layer distributions whose
# JSDs all sit at log 2; the choice between them is then decided by float rounding.
NEAR_TIE = 1e-4
LOGIT_ROWS = 256  # layer-logit rows per unembedding matmul: 256 x 262k floats is 268 MB


@dataclass(frozen=True)
class DolaSettings:
    """DoLa's knobs; `metric` None means MC1 for multiple-choice tasks, accuracy for completions."""

    bucket: str | tuple[int, ...] = "lower"
    post_softmax: bool = True
    alpha: float = 0.1
    premature_norm: bool = False  # the paper's choice: no norm on premature layers
    metric: Literal["mc1", "mc2", "mc3", "accuracy"] | None = None

    def validate(self, where: str) -> None:
        if isinstance(self.bucket, str) and self.bucket not in BUCKETS:
            raise SettingsError(f"{where}.bucket: expected one of {', '.join(BUCKETS)} or a list of layers, got {self.bucket!r}")
        if not isinstance(self.bucket, str) and (not self.bucket or min(self.bucket) < 0):
            raise SettingsError(f"{where}.bucket: a list of layers must be non-empty and hold layer indices >= 0")
        if not 0 < self.alpha <= 1:
            raise SettingsError(f"{where}.alpha: must be in (0, 1], got {self.alpha}")

    def bucket_name(self) -> str:
        return self.bucket if isinstance(self.bucket, str) else "layers " + ",".join(map(str, self.bucket))


@dataclass
class AnswerScores:
    """Per answer: baseline and DoLa scores, and the premature layer chosen at each answer token."""

    baseline: list[float]
    dola: list[float]
    premature: list[list[int]]
    forward_tokens: int = 0
    near_ties: int = 0  # positions whose best and second-best JSD differ by less than NEAR_TIE


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


@dataclass
class PromptCache:
    """Keys and values of a text that starts many prompts (DoLa's instruction and demonstrations)."""

    ids: list[int]
    cache: Any


def encode_context(handle: ModelHandle, text: str) -> PromptCache:
    """Encode `text` once so that every prompt starting with its tokens skips it."""
    ids = handle.tokenizer(text)["input_ids"]  # type: ignore[operator]
    with torch.inference_mode():
        out = handle.model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
    return PromptCache(ids, getattr(out, "cache", None) or out.past_key_values)


def score_answers(
    handle: ModelHandle, prompt: str, answers: list[str], settings: DolaSettings, context: PromptCache | None = None
) -> AnswerScores:
    """Baseline and DoLa scores of each answer as a continuation of `prompt`.

    With `context`, the prompt's leading tokens that equal `context.ids` come from its cache
    (same numbers up to float rounding); otherwise the whole prompt is encoded here.
    """
    a = handle.adapter
    model = handle.model
    fulls, starts = _answer_ids(handle.tokenizer, prompt, answers)
    shared = min(starts)  # tokens every answer shares with the prompt: encoded once
    skip = 0
    if context is not None and len(context.ids) < shared and fulls[0][: len(context.ids)] == context.ids:
        skip = len(context.ids)
    prefix = torch.tensor([fulls[0][skip:shared]])
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
        reuse = {_cache_kwarg(model): copy.deepcopy(context.cache)} if skip else {}
        first = model(
            input_ids=prefix, position_ids=torch.arange(skip, shared).unsqueeze(0), attention_mask=torch.ones(1, shared, dtype=torch.long),
            use_cache=True, output_hidden_states=True, logits_to_keep=1, **reuse,
        )
        cache = getattr(first, "cache", None) or first.past_key_values
        cache.batch_repeat_interleave(n)
        second = model(
            input_ids=rest_ids, attention_mask=torch.cat([torch.ones(n, shared, dtype=torch.long), rest_mask], dim=1),
            position_ids=(shared + torch.arange(width)).unsqueeze(0).expand(n, -1), use_cache=True,
            output_hidden_states=True, **{_cache_kwarg(model): cache},
        )
        # every scored position of every answer; hidden index k predicts the token at absolute
        # position shared + k (k = 0 is the prefix's last token)
        owner = torch.tensor([i for i, f in enumerate(fulls) for _ in range(starts[i], len(f))])
        ks = torch.cat([torch.arange(starts[i] - shared, len(f) - shared) for i, f in enumerate(fulls)])
        targets = torch.tensor([t for i, f in enumerate(fulls) for t in f[starts[i] :]])

        def at_positions(last: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
            return torch.cat([last.expand(n, -1, -1), rest], dim=1)[owner, ks]

        mature_all = at_positions(first.logits[:, -1:], second.logits).float()  # (P, V)
        states = torch.stack([at_positions(first.hidden_states[j][:, -1:], second.hidden_states[j]) for j in layers])
        if norm is not None:
            states = norm(states)
        base_tok, dola_tok, choices = [], [], []
        near_ties = 0
        # layer logits for many positions per matmul: the unembedding (up to 262k x hidden) is read once per chunk
        step = max(1, LOGIT_ROWS // len(layers))
        for lo in range(0, len(targets), step):
            mature = mature_all[lo : lo + step]
            premature_logits = (states[:, lo : lo + step] @ unembed.T).float()  # (C, p, V)
            divergence = jsd(mature.unsqueeze(0), premature_logits)  # (C, p)
            choice = divergence.argmax(dim=0)  # first candidate wins ties
            if len(layers) > 1:
                top2 = divergence.topk(2, dim=0).values
                near_ties += int(((top2[0] - top2[1]) < NEAR_TIE).sum())
            rows = torch.arange(len(mature))
            f = contrast(mature, premature_logits[choice, rows], settings)
            tgt = targets[lo : lo + step]
            base_tok.append(torch.log_softmax(mature, dim=-1)[rows, tgt])
            dola_tok.append(f[rows, tgt])
            choices.append(choice)
        baseline = torch.zeros(n).index_add_(0, owner, torch.cat(base_tok)).tolist()
        dola = torch.zeros(n).index_add_(0, owner, torch.cat(dola_tok)).tolist()
        premature: list[list[int]] = [[] for _ in range(n)]
        for i, c in zip(owner.tolist(), torch.cat(choices).tolist()):
            premature[i].append(layers[c])
    return AnswerScores(baseline, dola, premature, forward_tokens=shared - skip + n * width, near_ties=near_ties)


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

"""DoLa (Chuang et al. 2024) scoring of candidate continuations, as the reliability study ran it.

For one prompt and its candidate answers, the unsteered score is the sum of final-layer log-probs of the answer tokens; the DoLa score
contrasts the mature (last) layer with the premature layer of largest divergence among the bucket's
candidates, per answer position (the original code's divergence by default, the paper's JSD as a
setting; ties within a relative tolerance go to the earliest layer). docs/dola-audit.md compares every
step with the paper and the original code. The prompt is encoded
once; the answers run as one batch on its cache; layer logits are computed only for the
bucket's layers and only at answer positions.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pytest_steer.methods.base import ControlOutcome, Decides, MethodOutcome, Phases, RunContext
from pytest_steer.methods.scoring import cache_kwarg
from pytest_steer.methods.settings import BUCKETS, DolaSettings
from pytest_steer.models.loader import ModelHandle
from pytest_steer.cases.settings import SettingsError
from pytest_steer.tasks import Completion, MCQuestion, Task, TaskError, require_kind, sample_items
from pytest_steer.tasks.data import SEQUENTIAL_BLOCK, sequential_order
from pytest_steer.tasks.prompts import choice_prompts, completion_text, letter_text, mc_answer, mc_context, mc_prompt

LOGIT_ROWS = 256  # layer-logit rows per unembedding matmul: 256 x 262k floats is 268 MB
# Positions per divergence and contrast evaluation. Row-wise ops give the same bits on a slice as on the
# whole chunk, but one position's (C, V) floats stay in cache where the chunk's 268 MB do not: 4x faster.
SCORE_ROWS = 1


@dataclass
class AnswerScores:
    """Per answer: unsteered (final-layer) and DoLa scores, and the premature layer chosen at each answer token."""

    unsteered: list[float]
    dola: list[float]
    premature: list[list[int]]
    forward_tokens: int = 0
    ties: int = 0  # positions where more than one candidate layer tied for the largest divergence


def candidate_layers(bucket: str | tuple[int, ...], num_layers: int) -> list[int]:
    """`range(int(b0 L), int(b1 L) + 1, 2)` over hidden-state indices, the mature layer L excluded; ascending
    (the tie rule picks the earliest)."""
    if not isinstance(bucket, str):
        layers = sorted(set(bucket))
    elif bucket in BUCKETS:
        b0, b1 = BUCKETS[bucket]
        layers = list(range(int(b0 * num_layers), int(b1 * num_layers) + 1, 2))
    else:
        raise ValueError(f"unknown bucket {bucket!r}: expected one of {', '.join(BUCKETS)} or a list of layers")
    layers = [l for l in layers if l != num_layers]
    if not layers or not all(0 <= l < num_layers for l in layers):
        raise ValueError(f"bucket {bucket!r} gives no valid premature layer for a model with {num_layers} layers")
    return layers


def _log_mixture(mature_logits: torch.Tensor, premature_logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """log q_N, log q_j and log M = log((q_N + q_j) / 2), the terms both divergences are made of."""
    log_q_n = torch.log_softmax(mature_logits, dim=-1)
    log_q_j = torch.log_softmax(premature_logits, dim=-1)
    return log_q_n, log_q_j, torch.logaddexp(log_q_n, log_q_j) - math.log(2.0)


def jsd(mature_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between softmax(mature) (..., V) and softmax(premature) (C, ..., V)."""
    log_q_n, log_q_j, log_m = _log_mixture(mature_logits, premature_logits)
    kl_n = (log_q_n.exp() * (log_q_n - log_m)).sum(-1)
    kl_j = (log_q_j.exp() * (log_q_j - log_m)).sum(-1)
    return (kl_n + kl_j) / 2


def mixture_kl(mature_logits: torch.Tensor, premature_logits: torch.Tensor) -> torch.Tensor:
    """The divergence the original DoLa code computes (voidism/DoLa `dola.py`, as the reliability study
    vendored it, and transformers' DoLa decoding): `F.kl_div(log q, M)` is KL(M || q), so its "JS divergence"
    is (KL(M || q_N) + KL(M || q_j)) / 2 with the arguments of the paper's formula reversed (there
    divided by the vocabulary size, which no argmax sees). Unbounded, so it does not saturate at log 2."""
    log_q_n, log_q_j, log_m = _log_mixture(mature_logits, premature_logits)
    m = log_m.exp()
    return ((m * (log_m - log_q_n)).sum(-1) + (m * (log_m - log_q_j)).sum(-1)) / 2


DIVERGENCES = {"original": mixture_kl, "jsd": jsd}


def contrast(mature_logits: torch.Tensor, premature_logits: torch.Tensor, settings: DolaSettings) -> torch.Tensor:
    """DoLa's next-token scores: log-softmax contrast, optional post-softmax, plausibility mask (none at alpha 0)."""
    log_n = torch.log_softmax(mature_logits, dim=-1)
    scores = log_n - torch.log_softmax(premature_logits, dim=-1)
    if settings.post_softmax:
        scores = torch.log_softmax(scores, dim=-1)
    if settings.alpha == 0:  # no plausibility mask, as the original TruthfulQA-MC run (relative_top 0)
        return scores
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


@dataclass
class AnswerStates:
    """One row per scored answer token: mature logits, candidate-layer states, target and owning answer."""

    mature: torch.Tensor  # (P, V) float32
    states: torch.Tensor  # (C, P, hidden)
    targets: torch.Tensor  # (P,)
    owner: torch.Tensor  # (P,) answer index
    forward_tokens: int


@dataclass
class AnswerPass:
    """The prompt and its answers run through the model once: everything the scoring reads."""

    fulls: list[list[int]]
    starts: list[int]
    shared: int  # tokens every answer shares with the prompt
    first: Any  # the prefix's output (last position only)
    second: Any  # the answers' output, one row per answer
    forward_tokens: int


def _answer_pass(handle: ModelHandle, prompt: str, answers: list[str], context: PromptCache | None) -> AnswerPass:
    """Run the prompt once and all answers as one batch on its cache, keeping every hidden state."""
    model = handle.model
    fulls, starts = _answer_ids(handle.tokenizer, prompt, answers)
    shared = min(starts)  # tokens every answer shares with the prompt: encoded once
    skip = 0
    if context is not None and len(context.ids) < shared and fulls[0][: len(context.ids)] == context.ids:
        skip = len(context.ids)
    prefix = torch.tensor([fulls[0][skip:shared]])
    pad = handle.tokenizer.pad_token_id  # type: ignore[attr-defined]
    rests = [f[shared:] for f in fulls]
    width = max(len(r) for r in rests)
    rest_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rests])
    rest_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rests])
    n = len(answers)
    reuse = {cache_kwarg(model): copy.deepcopy(context.cache)} if skip else {}
    first = model(
        input_ids=prefix, position_ids=torch.arange(skip, shared).unsqueeze(0), attention_mask=torch.ones(1, shared, dtype=torch.long),
        use_cache=True, output_hidden_states=True, logits_to_keep=1, **reuse,
    )
    cache = getattr(first, "cache", None) or first.past_key_values
    cache.batch_repeat_interleave(n)
    second = model(
        input_ids=rest_ids, attention_mask=torch.cat([torch.ones(n, shared, dtype=torch.long), rest_mask], dim=1),
        position_ids=(shared + torch.arange(width)).unsqueeze(0).expand(n, -1), use_cache=True,
        output_hidden_states=True, **{cache_kwarg(model): cache},
    )
    return AnswerPass(fulls, starts, shared, first, second, shared - skip + n * width)


def _answer_states(handle: ModelHandle, run: AnswerPass, layers: list[int], settings: DolaSettings) -> AnswerStates:
    """Gather the answer positions of one pass for the bucket's layers."""
    fulls, starts, shared, n = run.fulls, run.starts, run.shared, len(run.fulls)
    # every scored position of every answer; hidden index k predicts the token at absolute
    # position shared + k (k = 0 is the prefix's last token)
    owner = torch.tensor([i for i, f in enumerate(fulls) for _ in range(starts[i], len(f))])
    ks = torch.cat([torch.arange(starts[i] - shared, len(f) - shared) for i, f in enumerate(fulls)])
    targets = torch.tensor([t for i, f in enumerate(fulls) for t in f[starts[i] :]])

    device = run.second.logits.device  # with a device map, blocks (and their states) sit on several devices

    def at_positions(last: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        return torch.cat([last.expand(n, -1, -1), rest], dim=1).to(device)[owner.to(device), ks.to(device)]

    mature = at_positions(run.first.logits[:, -1:], run.second.logits).float()  # (P, V)
    states = torch.stack([at_positions(run.first.hidden_states[j][:, -1:], run.second.hidden_states[j]) for j in layers])
    if settings.premature_norm:
        norm = handle.adapter.final_norm(handle.model)
        if norm is None:
            raise SettingsError(f"dola.premature_norm: {handle.adapter.model_type} has no final norm to apply")
        states = norm(states.to(next(norm.parameters()).device))
    return AnswerStates(mature, states, targets, owner, run.forward_tokens)


def score_answers(
    handle: ModelHandle, prompt: str, answers: list[str], settings: DolaSettings, context: PromptCache | None = None
) -> AnswerScores:
    """Unsteered and DoLa scores of each answer as a continuation of `prompt`.

    With `context`, the prompt's leading tokens that equal `context.ids` come from its cache
    (same numbers up to float rounding); otherwise the whole prompt is encoded here.
    """
    return score_answers_many(handle, prompt, answers, [settings], context)[0]


def score_answers_many(
    handle: ModelHandle, prompt: str, answers: list[str], variants: list[DolaSettings],
    context: PromptCache | None = None, clock: Phases | None = None,
) -> list[AnswerScores]:
    """`score_answers` under several settings from one forward pass: each one's numbers are
    exactly those it gets alone, since only the scoring after the pass differs."""
    unembed = handle.adapter.unembedding(handle.model).float()  # layer logits in float32 whatever the weight dtype
    clock = clock or Phases()
    with torch.inference_mode():
        clock.lap("other")
        run = _answer_pass(handle, prompt, answers, context)
        clock.lap("forward")
        return [_score(handle, run, unembed, settings, clock) for settings in variants]


@dataclass
class ChunkScores:
    """Per answer position of one chunk: final-layer and DoLa log-probs of the target, the chosen candidate."""

    unsteered: torch.Tensor  # (p,) float32
    dola: torch.Tensor  # (p,) float32
    choice: torch.Tensor  # (p,) index into the candidate layers
    ties: int  # positions where more than one candidate tied for the largest divergence


def choose_premature(divergence: torch.Tensor, tie_tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position (column of the (C, p) divergences): the candidate DoLa contrasts with, and whether it was a tie.
    (Divergences are >= 0: the relative band below the largest is a band of values.)

    Candidates within `tie_tolerance` (relative) of the largest divergence tie, and the earliest of them wins.
    Float rounding (thread count, CPU, chunking) moves a divergence by ~1e-6 relative, so an exact argmax
    between saturated layers (Gemma 3's near one-hot raw layers all sit at log 2) is decided by the machine;
    the tie set is not, except for a candidate within rounding of its edge."""
    best = divergence.max(dim=0).values
    tied = divergence >= best * (1.0 - tie_tolerance)
    return tied.to(torch.int8).argmax(dim=0), tied.sum(dim=0) > 1  # argmax: the first of equal values


def score_chunk(mature: torch.Tensor, premature: torch.Tensor, targets: torch.Tensor, settings: DolaSettings) -> ChunkScores:
    """Score positions of mature logits (p, V) against their candidate-layer logits (C, p, V), SCORE_ROWS at a time."""
    base, dola, choices, ties = [], [], [], 0
    for r in range(0, len(mature), SCORE_ROWS):
        m, t, p = mature[r : r + SCORE_ROWS], targets[r : r + SCORE_ROWS], premature[:, r : r + SCORE_ROWS]
        choice, tied = choose_premature(DIVERGENCES[settings.divergence](m.unsqueeze(0), p), settings.tie_tolerance)
        ties += int(tied.sum())
        rows = torch.arange(len(m), device=m.device)
        base.append(torch.log_softmax(m, dim=-1)[rows, t].cpu())
        dola.append(contrast(m, p[choice, rows], settings)[rows, t].cpu())
        choices.append(choice.cpu())
    return ChunkScores(torch.cat(base), torch.cat(dola), torch.cat(choices), ties)


def _score(handle: ModelHandle, run: AnswerPass, unembed: torch.Tensor, settings: DolaSettings, clock: Phases) -> AnswerScores:
    layers = candidate_layers(settings.bucket, handle.adapter.num_layers)
    n = len(run.fulls)
    s = _answer_states(handle, run, layers, settings)
    chunks = []
    # layer logits for many positions per matmul: the unembedding (up to 262k x hidden) is read once per chunk
    step = max(1, LOGIT_ROWS // len(layers))
    for lo in range(0, len(s.targets), step):
        mature = s.mature[lo : lo + step]
        premature_logits = s.states[:, lo : lo + step].to(unembed.device).float() @ unembed.T  # (C, p, V)
        clock.lap("layer_logits")
        chunks.append(score_chunk(mature, premature_logits, s.targets[lo : lo + step].to(mature.device), settings))
        clock.lap("divergence_and_contrast")
    unsteered = torch.zeros(n).index_add_(0, s.owner, torch.cat([c.unsteered for c in chunks])).tolist()
    dola = torch.zeros(n).index_add_(0, s.owner, torch.cat([c.dola for c in chunks])).tolist()
    premature: list[list[int]] = [[] for _ in range(n)]
    for i, c in zip(s.owner.tolist(), torch.cat([c.choice for c in chunks]).tolist()):
        premature[i].append(layers[c])
    return AnswerScores(unsteered, dola, premature, forward_tokens=s.forward_tokens,
                        ties=sum(c.ties for c in chunks))


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


# ---------------------------------------------------------------- the suite method

MC_METRICS = ("mc1", "mc2", "mc3")


def resolve_metric(settings: DolaSettings, kind: str, where: str) -> str:
    metric = settings.metric or ("mc1" if kind == "mc" else "accuracy")
    if (kind == "mc") != (metric in MC_METRICS):
        allowed = "mc1, mc2 or mc3" if kind == "mc" else "accuracy"
        raise SettingsError(f"{where}: metric {metric!r} does not apply to a {kind} task (expected {allowed})")
    return metric


class DolaMethod:
    """DoLa: unsteered vs contrastive-layer scoring of every question of the test split."""

    name = "dola"
    settings_type = DolaSettings
    scores_sequentially = True  # test items one by one: --steer-sequential may stop early
    side_effects = True  # the control questions are scored with and without DoLa too

    def prepare(self, task: Task, n_dev: int, n_test: int, seed: int) -> tuple[tuple[int, ...], dict[str, int]]:
        """Draw `n_test` items with `seed` (kept in file order); n_dev is unused."""
        require_kind(task, ("mc", "completion"), self.name)
        return sample_items(task, n_test, seed), {"test": n_test}

    def run(
        self, handle: ModelHandle, task: Task, splits: tuple[int, ...], settings: DolaSettings, context: RunContext
    ) -> MethodOutcome:
        return self.run_many(handle, task, splits, [settings], context)[0]

    def run_many(
        self, handle: ModelHandle, task: Task, splits: tuple[int, ...], variants: list[DolaSettings],
        context: RunContext,
    ) -> list[MethodOutcome]:
        """Several settings on the same test items: one forward pass per question for all of them,
        and each outcome exactly the one `run` gives alone."""
        tallies = [_Tally.start(handle, task, splits, settings) for settings in variants]
        clock = Phases()
        label = f"DoLa {'+'.join(settings.bucket_name() for settings in variants)} on {task.name}"
        looks = context.sequential
        rows = sequential_order(len(splits), context.seed) if looks else list(range(len(splits)))

        def decided(used: list[int]) -> bool:
            return bool(looks) and len(used) % SEQUENTIAL_BLOCK == 0 and len(used) < len(rows) and \
                _decided(looks, tallies, task, splits, used)  # type: ignore[arg-type]

        used = sorted(_score_rows(handle, task, splits, variants, rows, tallies, clock, label, context, decided))
        outcomes = [tally.outcome(handle, task, splits, used) for tally in tallies]
        if looks:
            for outcome in outcomes:
                outcome.diagnostics["sequential"] = {"items": len(used), "of": len(splits)}
        for outcome, control in zip(outcomes, self._controls(handle, variants, context)):
            outcome.phases, outcome.control = dict(clock.seconds), control
        return outcomes

    def _controls(self, handle: ModelHandle, variants: list[DolaSettings],
                  context: RunContext) -> list[ControlOutcome | None]:
        """The side-effect control under each setting: its two-choice questions as completions (the prompt, then
        the right letter against the other), scored without and with DoLa; None each when the case has none."""
        control = context.control
        if control is None:
            return [None] * len(variants)
        prompts, matching = choice_prompts(control.items)
        items = tuple(Completion(p, letter_text(m), (letter_text(1 - m),)) for p, m in zip(prompts, matching))
        task = Task(control.task, "completion", items, f"the control task {control.task!r}")
        alone = RunContext(cache=context.cache, seed=context.seed, progress=context.progress)
        scored = self.run_many(handle, task, tuple(range(len(items))),
                               [dataclasses.replace(v, metric=None) for v in variants], alone)
        texts = [item.question for item in control.items]
        return [ControlOutcome(control.task, texts, o.unsteered, o.steered) for o in scored]


    def run_part(
        self, handle: ModelHandle, task: Task, splits: tuple[int, ...], variants: list[DolaSettings], rows: list[int],
        context: RunContext,
    ) -> list[dict[str, Any]]:
        """Score only `rows` of the test split for every setting (one pass per question, as `run_many`): one
        JSON-able part per setting, which `combine` joins into exactly the outcome of the whole split."""
        tallies = [_Tally.start(handle, task, splits, settings) for settings in variants]
        label = f"DoLa {'+'.join(settings.bucket_name() for settings in variants)} on {task.name}, items {rows[0]}-{rows[-1]}"
        _score_rows(handle, task, splits, variants, rows, tallies, Phases(), label, context, lambda used: False)
        return [tally.part(rows) for tally in tallies]

    def combine(
        self, handle: ModelHandle, task: Task, splits: tuple[int, ...], variants: list[DolaSettings],
        parts: list[list[dict[str, Any]]], context: RunContext | None = None,
    ) -> list[MethodOutcome]:
        """Each setting's outcome from its parts (together covering every row once), with its side-effect control
        where `context` has one. ValueError if they do not cover every row once."""
        outcomes = []
        for settings, mine in zip(variants, parts):
            tally = _Tally.start(handle, task, splits, settings)
            seen: list[int] = []
            for part in mine:
                seen.extend(tally.add_part(part))
            if sorted(seen) != list(range(len(splits))):
                raise ValueError(f"DoLa parts cover rows {sorted(seen)}, expected each of 0..{len(splits) - 1} once")
            outcomes.append(tally.outcome(handle, task, splits, list(range(len(splits)))))
        if context is not None:
            for outcome, control in zip(outcomes, self._controls(handle, variants, context)):
                outcome.control = control
        return outcomes


def _score_rows(
    handle: ModelHandle, task: Task, splits: tuple[int, ...], variants: list[DolaSettings], rows: list[int],
    tallies: list[_Tally], clock: Phases, label: str, context: RunContext, stop: Callable[[list[int]], bool],
) -> list[int]:
    """Score `rows` in order into every tally, until `stop(rows scored so far)`; the rows scored."""
    context_cache = encode_context(handle, mc_context()) if task.kind == "mc" else None
    used: list[int] = []
    for row in rows:
        context.report(label, len(used), len(rows))
        try:
            _score_item(handle, task.items[splits[row]], variants, context_cache, row, tallies, clock)
        except ValueError as exc:
            raise TaskError(f"{task.source}: item {splits[row]}: {exc}") from exc
        used.append(row)
        if stop(used):
            break
    context.report(label, len(used), len(rows))
    return used


@dataclass
class _Tally:
    """One setting's running scores over the test items."""

    settings: DolaSettings
    metric: str
    layers: list[int]
    unsteered: dict[str, np.ndarray]
    dola: dict[str, np.ndarray]
    histogram: Counter[int]
    forward_tokens: int = 0
    ties: int = 0

    @classmethod
    def start(cls, handle: ModelHandle, task: Task, splits: tuple[int, ...], settings: DolaSettings) -> _Tally:
        metric = resolve_metric(settings, task.kind, f"dola settings for task {task.name}")
        try:
            layers = candidate_layers(settings.bucket, handle.adapter.num_layers)
        except ValueError as exc:
            raise SettingsError(f"dola.bucket: {exc}") from exc
        names = MC_METRICS if task.kind == "mc" else ("accuracy",)
        return cls(settings, metric, layers, {m: np.zeros(len(splits)) for m in names},
                   {m: np.zeros(len(splits)) for m in names}, Counter())

    def part(self, rows: list[int]) -> dict[str, Any]:
        """What `rows` added to this tally, as JSON (floats round-trip exactly)."""
        return {
            "rows": list(rows),
            "unsteered": {m: [float(v) for v in values[rows]] for m, values in self.unsteered.items()},
            "dola": {m: [float(v) for v in values[rows]] for m, values in self.dola.items()},
            "histogram": {str(l): n for l, n in sorted(self.histogram.items())},
            "forward_tokens": self.forward_tokens, "ties": self.ties,
        }

    def add_part(self, part: dict[str, Any]) -> list[int]:
        """Fill in a part's rows; its rows. ValueError when the part does not fit this tally."""
        rows = [int(r) for r in part["rows"]]
        for side, values in ((self.unsteered, part["unsteered"]), (self.dola, part["dola"])):
            if set(values) != set(side) or any(len(v) != len(rows) for v in values.values()):
                raise ValueError("a DoLa part's metrics or lengths do not match its rows")
            for m, v in values.items():
                side[m][rows] = np.asarray(v, dtype=np.float64)
        self.histogram.update({int(l): int(n) for l, n in part["histogram"].items()})
        self.forward_tokens += int(part["forward_tokens"])
        self.ties += int(part["ties"])
        return rows

    def add(self, scores: AnswerScores) -> None:
        self.forward_tokens += scores.forward_tokens
        self.ties += scores.ties
        for chosen in scores.premature:
            self.histogram.update(chosen)

    def outcome(self, handle: ModelHandle, task: Task, splits: tuple[int, ...], used: list[int]) -> MethodOutcome:
        """The record of the rows `used` (every row unless a sequential run stopped early)."""
        layers, histogram = self.layers, self.histogram
        unsteered = {m: v[used] for m, v in self.unsteered.items()}
        dola = {m: v[used] for m, v in self.dola.items()}
        total = sum(histogram.values())
        shares = [histogram[l] / total for l in layers]
        top = layers[int(np.argmax(shares))]
        return MethodOutcome(
            unsteered=unsteered[self.metric],
            steered=dola[self.metric],
            icl=None,
            chosen={"bucket": self.settings.bucket_name(), "top_premature_layer": top, "top_share": round(max(shares), 3)},
            curves={"premature_layers": layers, "premature_share": [round(s, 4) for s in shares]},
            vectors={},
            vector_metadata={},
            diagnostics={
                "premature_histogram": {str(l): histogram[l] for l in layers},
                "scored_tokens": total,
                "forward_tokens": self.forward_tokens,
                "tie_share": round(self.ties / total, 4),  # positions whose premature layer the tie rule picked
                "num_layers": handle.adapter.num_layers,
            },
            test_items=[_item_text(task.items[splits[row]]) for row in used],
            metric=self.metric,
            secondary={m: (unsteered[m], dola[m]) for m in unsteered if m != self.metric},
        )


def _decided(looks: list[Decides], tallies: list[_Tally], task: Task, splits: tuple[int, ...], used: list[int]) -> bool:
    """Every setting's verdict is decided on the rows scored so far (`--steer-sequential`)."""
    texts = [_item_text(task.items[splits[row]]) for row in used]
    return all(look(texts, tally.unsteered[tally.metric][used], tally.dola[tally.metric][used])
               for look, tally in zip(looks, tallies))


def _item_text(item: MCQuestion | Completion) -> str:
    return item.question if isinstance(item, MCQuestion) else item.prefix


def _score_item(
    handle: ModelHandle, item: MCQuestion | Completion, variants: list[DolaSettings], context_cache: PromptCache | None,
    row: int, tallies: list[_Tally], clock: Phases | None = None,
) -> None:
    """Score one question (MC1/MC2/MC3) or passage (accuracy) into `row` of every setting's tally."""
    if isinstance(item, MCQuestion):
        answers = [mc_answer(a) for a in item.correct + item.incorrect]
        n_true = len(item.correct)
        for tally, scores in zip(tallies, score_answers_many(handle, mc_prompt(item.question), answers, variants,
                                                             context_cache, clock)):
            for side, values in ((tally.unsteered, scores.unsteered), (tally.dola, scores.dola)):
                result = mc_metrics(values[:n_true], values[n_true:])
                for m in MC_METRICS:
                    side[m][row] = getattr(result, m)
            tally.add(scores)
        return
    prompt, true = completion_text(item.prefix, item.completion)
    answers = [true] + [completion_text(item.prefix, c)[1] for c in item.contradictions]
    for tally, scores in zip(tallies, score_answers_many(handle, prompt, answers, variants, clock=clock)):
        tally.unsteered["accuracy"][row] = completion_correct(scores.unsteered[0], scores.unsteered[1:])
        tally.dola["accuracy"][row] = completion_correct(scores.dola[0], scores.dola[1:])
        tally.add(scores)

"""Tests for pytest_steer.methods.scoring (and its word-task wrappers in methods.search) on a tiny model."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_steer.methods.scoring import (
    InterventionScores,
    TokenCounter,
    cache_kwarg,
    encode,
    first_target_ids,
    score_interventions,
)
from pytest_steer.methods.search import PromptSet, Scoring
from pytest_steer.methods.task_vector import replace_at_layers
from pytest_steer.tasks import Pair
from pytest_steer.tasks.prompts import few_shot_prompt, zero_shot_prompt

from .conftest import build_tiny_model

PROMPTS = [zero_shot_prompt(f"w{i}") for i in range(7)] + [few_shot_prompt([Pair("w1", "v1"), Pair("w2", "v2")], "w9")]
TARGETS = [" v1"] * 8


def test_first_target_id_is_the_first_token_the_target_adds(tiny_handle) -> None:
    tok = tiny_handle.tokenizer
    assert first_target_ids(tok, ["Q: w3\nA:"], [" v3"]) == [tok.convert_tokens_to_ids("v3")]
    assert first_target_ids(tok, ["Q: w3\nA:"], [" v3 v4"]) == [tok.convert_tokens_to_ids("v3")]


def test_first_target_id_rejects_an_empty_target_and_length_mismatch(tiny_handle) -> None:
    with pytest.raises(ValueError, match="adds no token"):
        first_target_ids(tiny_handle.tokenizer, ["Q: w3\nA:"], [""])
    with pytest.raises(ValueError):
        first_target_ids(tiny_handle.tokenizer, ["Q: w3\nA:", "Q: w4\nA:"], [" v3"])  # zip(strict=True)


def test_first_target_id_accounts_for_bos(tmp_path: Path) -> None:
    from pytest_steer.models.loader import load_model
    from pytest_steer.models.spec import ModelSpec

    handle = load_model(ModelSpec("bos", "folder", str(build_tiny_model(tmp_path / "m", bos=True))), tmp_path / "c")
    batch = encode(handle.tokenizer, ["Q: w3\nA:"])
    assert int(batch["input_ids"][0, 0]) == handle.tokenizer.convert_tokens_to_ids("<s>")
    assert first_target_ids(handle.tokenizer, ["Q: w3\nA:"], [" v3"]) == [handle.tokenizer.convert_tokens_to_ids("v3")]


def test_left_padding_and_positions(tiny_handle) -> None:
    batch = encode(tiny_handle.tokenizer, ["Q: w1\nA:", few_shot_prompt([Pair("w1", "v1")], "w2")])
    assert batch["attention_mask"][:, -1].all()
    assert batch["attention_mask"][0, 0] == 0  # the short prompt is padded on the left
    assert batch["position_ids"][0, -1] == batch["attention_mask"][0].sum() - 1
    assert batch["position_ids"][1].tolist() == list(range(batch["input_ids"].shape[1]))


def test_right_padding_is_refused(tiny_handle) -> None:
    tok = tiny_handle.tokenizer
    tok.padding_side = "right"
    try:
        with pytest.raises(RuntimeError, match="pad on the left"):
            encode(tok, ["Q: w1\nA:", few_shot_prompt([Pair("w1", "v1")], "w2")])
    finally:
        tok.padding_side = "left"


def test_cache_kwarg_follows_the_forward_signature(tiny_handle) -> None:
    expected = "cache" if "cache" in inspect.signature(tiny_handle.model.forward).parameters else "past_key_values"
    assert cache_kwarg(tiny_handle.model) == expected

    class NewStyle(torch.nn.Module):
        def forward(self, input_ids=None, cache=None):  # noqa: ANN001, ANN202
            return None

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None):  # noqa: ANN001, ANN202
            return None

    assert cache_kwarg(NewStyle()) == "cache" and cache_kwarg(OldStyle()) == "past_key_values"


def test_scores_are_the_log_softmax_of_a_plain_forward(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    scores = score_interventions(tiny_handle, PROMPTS, ids, batch_size=3)
    assert scores.top1.shape == scores.target_logprob.shape == (8, 1)
    for row, prompt in enumerate(PROMPTS):
        with torch.inference_mode():
            logits = tiny_handle.model(**encode(tiny_handle.tokenizer, [prompt])).logits[0, -1].float()
        assert int(scores.top1[row, 0]) == int(logits.argmax())
        assert float(scores.target_logprob[row, 0]) == pytest.approx(float(torch.log_softmax(logits, -1)[ids[row]]), abs=1e-4)


def test_scoring_reports_its_progress_per_batch_without_changing_a_number(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    seen: list[tuple[int, int]] = []
    watched = score_interventions(tiny_handle, PROMPTS, ids, batch_size=3, progress=lambda d, t: seen.append((d, t)))
    plain = score_interventions(tiny_handle, PROMPTS, ids, batch_size=3)
    assert seen == [(3, 8), (6, 8), (8, 8)]
    assert torch.equal(watched.top1, plain.top1) and torch.equal(watched.target_logprob, plain.target_logprob)


def test_padded_batch_matches_single_prompts(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    together = score_interventions(tiny_handle, PROMPTS, ids, batch_size=8, reuse_prefix=False)
    alone = [score_interventions(tiny_handle, [p], [i], batch_size=1, reuse_prefix=False) for p, i in zip(PROMPTS, ids)]
    single = torch.cat([a.target_logprob for a in alone])
    assert torch.allclose(together.target_logprob, single, atol=1e-4)
    assert torch.equal(together.top1, torch.cat([a.top1 for a in alone]))


def test_prefix_cache_gives_the_same_numbers_as_full_prompts(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(0)) * 5
    layers = [0, 1, 2]
    results = []
    for reuse in (True, False):
        reports: dict = {}
        counter = TokenCounter()
        scores = score_interventions(tiny_handle, PROMPTS, ids, 3, replace_at_layers(tiny_handle, layers, vectors, reports),
                                     batch_size=4, max_rows=5, counter=counter, reuse_prefix=reuse)
        assert all(reports[l].fired_and_changed for l in layers)
        results.append((scores, counter.tokens))
    (cached, cached_tokens), (full, full_tokens) = results
    assert torch.allclose(cached.target_logprob, full.target_logprob, atol=1e-4)
    assert torch.equal(cached.top1, full.top1)
    assert cached_tokens < full_tokens  # the point of the prefix cache


def test_rows_are_prompt_major_and_chunking_does_not_change_numbers(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(1)) * 5
    big = score_interventions(tiny_handle, PROMPTS, ids, 3, replace_at_layers(tiny_handle, [0, 1, 2], vectors, {}),
                              batch_size=8, max_rows=256)
    small = score_interventions(tiny_handle, PROMPTS, ids, 3, replace_at_layers(tiny_handle, [0, 1, 2], vectors, {}),
                                batch_size=3, max_rows=2)
    assert torch.allclose(big.target_logprob, small.target_logprob, atol=1e-4)
    # column k is intervention k alone
    for k in range(3):
        alone = score_interventions(tiny_handle, PROMPTS, ids, 1, replace_at_layers(tiny_handle, [k], vectors, {}), batch_size=8)
        assert torch.allclose(big.target_logprob[:, k], alone.target_logprob[:, 0], atol=1e-4)


def test_token_counter_counts_real_tokens_only(tiny_handle) -> None:
    prompts = PROMPTS[:2] + PROMPTS[-1:]
    ids = first_target_ids(tiny_handle.tokenizer, prompts, [" v1"] * 3)
    lengths = [len(tiny_handle.tokenizer(p)["input_ids"]) for p in prompts]
    full = TokenCounter()
    score_interventions(tiny_handle, prompts, ids, 2, None, batch_size=8, counter=full, reuse_prefix=False)
    assert full.tokens == 2 * sum(lengths) and full.passes == 1  # every row runs its whole prompt, padding excluded
    cached = TokenCounter()
    score_interventions(tiny_handle, prompts, ids, 2, None, batch_size=8, max_rows=4, counter=cached)
    assert cached.tokens == sum(lengths) - 3 + 2 * 3  # the prefix once, then the last token per row
    assert cached.passes == 1 + 2  # the prefix pass and two chunks of at most 4 rows


def test_prefix_reuse_needs_two_tokens(tiny_handle) -> None:
    with pytest.raises(ValueError, match="at least two tokens"):
        score_interventions(tiny_handle, ["Q"], [3])
    scores = score_interventions(tiny_handle, ["Q"], [3], reuse_prefix=False)
    assert scores.target_logprob.shape == (1, 1) and float(scores.target_logprob[0, 0]) < 0


def test_correct_compares_the_argmax_with_each_target() -> None:
    scores = InterventionScores(top1=torch.tensor([[5, 6], [7, 7]]), target_logprob=torch.zeros(2, 2))
    correct = scores.correct([5, 7])
    assert correct.dtype == np.float64
    assert correct.tolist() == [[1.0, 0.0], [1.0, 1.0]]


# ---------------------------------------------------------------- word-task wrappers (methods.search)


def test_prompt_set_zero_shot(tiny_handle) -> None:
    pairs = [Pair("w1", "v1"), Pair("w2", "v2 v3")]
    data = PromptSet.zero_shot(tiny_handle, pairs)
    assert data.prompts == ["Q: w1\nA:", "Q: w2\nA:"]
    assert data.targets == [tiny_handle.tokenizer.convert_tokens_to_ids(t) for t in ("v1", "v2")]


def test_scoring_correct_matches_score_interventions(tiny_handle) -> None:
    pairs = [Pair(f"w{i}", f"v{i}") for i in range(6)]
    data = PromptSet.zero_shot(tiny_handle, pairs)
    counter = TokenCounter()
    got = Scoring(batch_size=4, max_rows=8, reuse_prefix=True).correct(tiny_handle, data, 1, None, counter)
    expected = score_interventions(tiny_handle, data.prompts, data.targets).correct(data.targets)
    assert got.shape == (6, 1) and np.array_equal(got, expected)
    assert counter.tokens > 0
    # force one answer right: the top token of prompt 0 as its target
    top = int(score_interventions(tiny_handle, data.prompts[:1], [0]).top1[0, 0])
    rigged = PromptSet(data.prompts[:1], [top])
    assert Scoring(4, 8, False).correct(tiny_handle, rigged, 1, None, TokenCounter()).tolist() == [[1.0]]


def test_reused_blocks_are_put_back_when_the_forward_fails(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    blocks = tiny_handle.adapter.blocks(tiny_handle.model)
    original = [type(b).forward for b in blocks]

    @contextmanager
    def boom(intervention: torch.Tensor):  # fails inside the forward, after the reused blocks are in place
        def fail(*_args):
            assert any("forward" in b.__dict__ for b in blocks)
            raise RuntimeError("hook failed")

        handle = blocks[-1].register_forward_hook(fail)
        try:
            yield
        finally:
            handle.remove()

    with pytest.raises(RuntimeError, match="hook failed"):
        score_interventions(tiny_handle, PROMPTS, ids, 3, boom, batch_size=4, unchanged_blocks=[2, 2, 3])
    assert all("forward" not in b.__dict__ and type(b).forward is f for b, f in zip(blocks, original))
    # and the model still scores as before
    again = score_interventions(tiny_handle, PROMPTS, ids, batch_size=8)
    assert again.top1.shape == (len(PROMPTS), 1)


def test_unchanged_blocks_must_name_every_intervention(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    with pytest.raises(ValueError, match="unchanged_blocks has 2 entries for 3 interventions"):
        score_interventions(tiny_handle, PROMPTS, ids, 3, None, unchanged_blocks=[1, 2])


def test_without_logprobs_the_argmax_is_the_same_and_logprobs_are_nan(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(2)) * 5
    both = [score_interventions(tiny_handle, PROMPTS, ids, 3, replace_at_layers(tiny_handle, [0, 1, 2], vectors, {}),
                                batch_size=4, logprobs=flag) for flag in (True, False)]
    assert torch.equal(both[0].top1, both[1].top1)
    assert not both[0].target_logprob.isnan().any() and both[1].target_logprob.isnan().all()

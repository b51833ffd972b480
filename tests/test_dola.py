"""DoLa scoring correctness on a tiny model and hand-made numbers."""

from __future__ import annotations

import math

import pytest
import torch

from pytest_steer.methods.dola import (
    DolaSettings, candidate_layers, completion_correct, contrast, jsd, mc_metrics, score_answers,
)
from pytest_steer.methods.scoring import encode

PROMPT = "Q: w1\nA:"
ANSWERS = [" v1", " v2 v3", " w4 v5 v6"]


def _plain(handle, text: str):
    with torch.inference_mode():
        return handle.model(**encode(handle.tokenizer, [text]), output_hidden_states=True)


def test_candidate_layers_follow_the_bucket_rule() -> None:
    assert candidate_layers("lower", 30) == list(range(0, 16, 2))
    assert candidate_layers("upper", 30) == list(range(15, 30, 2))  # 30 is the mature layer
    assert candidate_layers("q2", 24) == [6, 8, 10, 12]
    assert candidate_layers((1, 3), 4) == [1, 3]
    with pytest.raises(ValueError, match="unknown bucket"):
        candidate_layers("middle", 10)


def test_baseline_score_is_the_plain_log_prob_sum(tiny_handle) -> None:
    scores = score_answers(tiny_handle, PROMPT, ANSWERS, DolaSettings(bucket="full"))
    n_prompt = len(tiny_handle.tokenizer(PROMPT)["input_ids"])
    for answer, got in zip(ANSWERS, scores.baseline):
        out = _plain(tiny_handle, PROMPT + answer)
        ids = tiny_handle.tokenizer(PROMPT + answer)["input_ids"]
        logp = torch.log_softmax(out.logits[0].float(), dim=-1)
        expected = sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
        assert got == pytest.approx(expected, abs=1e-4)


def test_premature_layer_is_the_brute_force_jsd_argmax(tiny_handle) -> None:
    settings = DolaSettings(bucket=(0, 1, 2))
    scores = score_answers(tiny_handle, PROMPT, ANSWERS, settings)
    unembed = tiny_handle.adapter.unembedding(tiny_handle.model)
    n_prompt = len(tiny_handle.tokenizer(PROMPT)["input_ids"])
    for answer, chosen in zip(ANSWERS, scores.premature):
        out = _plain(tiny_handle, PROMPT + answer)
        n = len(tiny_handle.tokenizer(PROMPT + answer)["input_ids"])
        expected = []
        for t in range(n_prompt - 1, n - 1):
            q_n = torch.softmax(out.logits[0, t].double(), -1)
            best, best_d = None, -1.0
            for j in (0, 1, 2):
                q_j = torch.softmax((out.hidden_states[j][0, t] @ unembed.T).double(), -1)
                m = (q_n + q_j) / 2
                d = 0.5 * float((q_n * (q_n / m).log()).sum() + (q_j * (q_j / m).log()).sum())
                if d > best_d + 1e-9:
                    best, best_d = j, d
            expected.append(best)
        assert chosen == expected


def test_plausibility_mask_keeps_exactly_the_tokens_within_log_alpha() -> None:
    mature = torch.log(torch.tensor([0.5, 0.3, 0.06, 0.04, 0.1]))
    premature = torch.zeros(5)
    out = contrast(mature, premature, DolaSettings(alpha=0.1, post_softmax=False))
    # max prob 0.5: kept are tokens with p >= 0.05
    assert (out > -1000).tolist() == [True, True, True, False, True]
    out = contrast(mature, premature, DolaSettings(alpha=0.5))
    assert (out > -1000).tolist() == [True, True, False, False, False]


def test_post_softmax_off_is_the_raw_contrast_and_on_renormalises() -> None:
    torch.manual_seed(0)
    mature, premature = torch.randn(7), torch.randn(7)
    raw = torch.log_softmax(mature, -1) - torch.log_softmax(premature, -1)
    off = contrast(mature, premature, DolaSettings(alpha=1e-9, post_softmax=False))
    on = contrast(mature, premature, DolaSettings(alpha=1e-9, post_softmax=True))
    assert torch.allclose(off, raw)
    assert torch.allclose(on, torch.log_softmax(raw, -1))
    assert math.isclose(float(on.exp().sum()), 1.0, rel_tol=1e-5)


def test_jsd_is_zero_for_equal_distributions_and_symmetric() -> None:
    x, y = torch.randn(11), torch.randn(11)
    assert float(jsd(x, x.unsqueeze(0))[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(jsd(x, y.unsqueeze(0))[0]) == pytest.approx(float(jsd(y, x.unsqueeze(0))[0]), abs=1e-6)


def test_mc_metrics_on_hand_made_scores() -> None:
    r = mc_metrics([-1.0, -3.0, -0.5], [-2.0, -1.0])
    assert r.mc1 == 0.0  # best (-1.0) ties the top false: strict > fails
    assert r.mc3 == pytest.approx(1 / 3)  # only -0.5 beats -1.0
    expected = sum(math.exp(s) for s in (-1.0, -3.0, -0.5)) / sum(math.exp(s) for s in (-1.0, -3.0, -0.5, -2.0, -1.0))
    assert r.mc2 == pytest.approx(expected)
    assert mc_metrics([-0.1, -5.0], [-0.2, -0.3]).mc1 == 1.0
    tiny = mc_metrics([-2000.0], [-2001.0, -5000.0])  # exp underflows in float64 without the shift
    assert tiny.mc2 == pytest.approx(1 / (1 + math.exp(-1.0)), rel=1e-9)


def test_completion_counts_ties_as_correct() -> None:
    assert completion_correct(-1.0, [-1.0, -2.0, -3.0]) == 1.0
    assert completion_correct(-1.5, [-1.0, -2.0, -3.0]) == 0.0

"""DoLa scoring correctness on a tiny model and hand-made numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pytest_steer.methods.dola import (
    DolaMethod,
    candidate_layers,
    choose_premature,
    mixture_kl,
    completion_correct,
    contrast,
    encode_context,
    jsd,
    mc_metrics,
    score_answers,
)
from pytest_steer.methods.scoring import encode
from pytest_steer.methods.settings import DolaSettings
from pytest_steer.tasks import TaskError, load_task
from pytest_steer.tasks.prompts import mc_answer, mc_context, mc_prompt

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


def test_tie_rule_picks_the_earliest_of_the_candidates_near_the_largest_divergence() -> None:
    ln2 = math.log(2.0)
    divergence = torch.tensor([[0.30, ln2 * (1 - 5e-4), 0.10, 0.50],
                               [ln2, 0.20, 0.40, 0.52],
                               [ln2 * (1 - 1e-5), ln2, 0.41, 0.50]])  # (C=3 candidates, 4 positions)
    choice, tied = choose_premature(divergence, 1e-3)
    assert choice.tolist() == [1, 0, 2, 1]  # position 2: 0.41 is 2.4 % above 0.40, no tie
    assert tied.tolist() == [True, True, False, False]
    choice, tied = choose_premature(divergence, 0.0)  # tolerance 0: the plain argmax, first of exact equals
    assert choice.tolist() == [1, 2, 2, 1] and not tied.any()
    choice, tied = choose_premature(divergence, 0.05)  # 0.50 is within 5 % of 0.52, 0.40 of 0.41
    assert choice.tolist() == [1, 0, 1, 0] and tied.all()


def test_tie_rule_choice_survives_rounding_noise() -> None:
    """A class of inputs, not an example: saturated candidates perturbed by float32 rounding-sized noise
    (what another thread count or CPU does to a sum over a large vocabulary) keep their chosen layer."""
    gen = torch.Generator().manual_seed(7)
    for _ in range(200):
        c, p = int(torch.randint(2, 9, (1,), generator=gen)), 16
        base = torch.rand(c, p, generator=gen) * 0.69
        saturated = torch.rand(c, p, generator=gen) < 0.5
        base = torch.where(saturated, torch.full_like(base, math.log(2.0)), base)
        noisy = base * (1 + (torch.rand(c, p, generator=gen) - 0.5) * 2e-6)
        assert torch.equal(choose_premature(base, 1e-3)[0], choose_premature(noisy, 1e-3)[0])
        # the exact argmax, by contrast, follows the noise wherever two candidates saturate
    exact = torch.tensor([[math.log(2.0)], [math.log(2.0) * (1 + 1e-7)]])
    assert exact.argmax(0).item() == 1 and choose_premature(exact, 1e-3)[0].item() == 0


def test_unsteered_score_is_the_plain_log_prob_sum(tiny_handle) -> None:
    scores = score_answers(tiny_handle, PROMPT, ANSWERS, DolaSettings(bucket="full"))
    n_prompt = len(tiny_handle.tokenizer(PROMPT)["input_ids"])
    assert len(scores.unsteered) == len(scores.dola) == len(scores.premature) == len(ANSWERS)
    for answer, got in zip(ANSWERS, scores.unsteered):
        out = _plain(tiny_handle, PROMPT + answer)
        ids = tiny_handle.tokenizer(PROMPT + answer)["input_ids"]
        logp = torch.log_softmax(out.logits[0].float(), dim=-1)
        expected = sum(float(logp[t - 1, ids[t]]) for t in range(n_prompt, len(ids)))
        assert got == pytest.approx(expected, abs=1e-4)


def _divergence_by_formula(q_n: torch.Tensor, q_j: torch.Tensor, kind: str) -> float:
    """Written from the formulas, unbatched, in float64: the paper's JSD, or the original code's
    `0.5 * (kl_div(log q_N, M) + kl_div(log q_j, M))`, i.e. KL(M || q) with the arguments reversed."""
    m = (q_n + q_j) / 2
    if kind == "jsd":
        return 0.5 * float((q_n * (q_n / m).log()).sum() + (q_j * (q_j / m).log()).sum())
    return 0.5 * float((m * (m / q_n).log()).sum() + (m * (m / q_j).log()).sum())


def _dola_by_formula(handle, prompt: str, answer: str, settings: DolaSettings) -> tuple[float, list[int]]:
    """One answer's DoLa score and premature layers, position by position from the full, unbatched sequence."""
    unembed = handle.adapter.unembedding(handle.model).double()
    out = _plain(handle, prompt + answer)
    ids = handle.tokenizer(prompt + answer)["input_ids"]
    n_prompt = len(handle.tokenizer(prompt)["input_ids"])
    layers = sorted(set(settings.bucket))
    score, chosen = 0.0, []
    for t in range(n_prompt - 1, len(ids) - 1):
        z_n = out.logits[0, t].double()
        q_n = torch.softmax(z_n, -1)
        zs = [out.hidden_states[j][0, t].double() @ unembed.T for j in layers]
        ds = [_divergence_by_formula(q_n, torch.softmax(z, -1), settings.divergence) for z in zs]
        pick = next(k for k, d in enumerate(ds) if d >= max(ds) * (1 - settings.tie_tolerance))  # earliest tied
        chosen.append(layers[pick])
        log_n = torch.log_softmax(z_n, -1)
        f = log_n - torch.log_softmax(zs[pick], -1)
        if settings.post_softmax:
            f = torch.log_softmax(f, -1)
        if settings.alpha > 0:
            f = torch.where(log_n < log_n.max() + math.log(settings.alpha), torch.full_like(f, -1000.0), f)
        score += float(f[ids[t + 1]])
    return score, chosen


@pytest.mark.parametrize("divergence", ["original", "jsd"])
@pytest.mark.parametrize("post_softmax, alpha", [(True, 0.1), (False, 0.1), (False, 0.0)])
def test_dola_score_of_each_answer_is_the_formula_computed_unbatched(tiny_handle, divergence, post_softmax, alpha) -> None:
    settings = DolaSettings(bucket=(2, 0, 1), divergence=divergence, post_softmax=post_softmax, alpha=alpha)
    scores = score_answers(tiny_handle, PROMPT, ANSWERS, settings)
    for i, answer in enumerate(ANSWERS):
        expected, layers = _dola_by_formula(tiny_handle, PROMPT, answer, settings)
        assert scores.premature[i] == layers
        assert scores.dola[i] == pytest.approx(expected, rel=1e-4, abs=1e-3)


def test_the_two_divergences_rank_saturated_layers_differently() -> None:
    """Near one-hot premature layers (what unnormalised residuals give) saturate the JSD at log 2; the original
    code's reversed KL still tells them apart, by how little mass each puts on the mature layer's top token."""
    mature = torch.tensor([[8.0, 0.0, 0.0, 0.0]])
    premature = torch.tensor([[[0.0, 60.0, 0.0, 0.0]], [[0.0, 0.0, 90.0, 0.0]]])  # (C=2, 1, V)
    js = jsd(mature, premature)[:, 0]
    assert js[0] == pytest.approx(math.log(2), abs=2e-3) and js[1] == pytest.approx(math.log(2), abs=2e-3)
    kl = mixture_kl(mature, premature)[:, 0]
    assert kl[1] > kl[0] * 1.2  # the layer further from the mature top token is clearly the more distant


def test_premature_norm_changes_only_the_dola_scores(tiny_handle) -> None:
    plain = score_answers(tiny_handle, PROMPT, ANSWERS, DolaSettings(bucket=(0, 1, 2)))
    normed = score_answers(tiny_handle, PROMPT, ANSWERS, DolaSettings(bucket=(0, 1, 2), premature_norm=True))
    assert normed.unsteered == pytest.approx(plain.unsteered, abs=1e-6)  # the mature layer is normed either way
    assert normed.dola != pytest.approx(plain.dola, abs=1e-6)


def test_premature_norm_needs_a_final_norm(tiny_handle) -> None:
    import dataclasses

    from pytest_steer.models.loader import ModelHandle
    from pytest_steer.cases.settings import SettingsError

    adapter = dataclasses.replace(tiny_handle.adapter, final_norm_path=None)
    handle = ModelHandle(tiny_handle.model, tiny_handle.tokenizer, adapter, tiny_handle.fingerprint)
    with pytest.raises(SettingsError, match="premature_norm: llama has no final norm"):
        score_answers(handle, PROMPT, ANSWERS, DolaSettings(bucket=(0, 1), premature_norm=True))
    assert len(score_answers(handle, PROMPT, ANSWERS, DolaSettings(bucket=(0, 1))).dola) == 3  # not needed without it


def test_plausibility_mask_keeps_exactly_the_tokens_within_log_alpha() -> None:
    mature = torch.log(torch.tensor([0.5, 0.3, 0.06, 0.04, 0.1]))
    premature = torch.zeros(5)
    out = contrast(mature, premature, DolaSettings(alpha=0.1, post_softmax=False))
    # max prob 0.5: kept are tokens with p >= 0.05
    assert (out > -1000).tolist() == [True, True, True, False, True]
    out = contrast(mature, premature, DolaSettings(alpha=0.5))
    assert (out > -1000).tolist() == [True, True, False, False, False]
    out = contrast(mature, premature, DolaSettings(alpha=0.0, post_softmax=False))  # the original TruthfulQA-MC run
    assert torch.equal(out, mature - torch.log_softmax(premature, -1))


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


# ---------------------------------------------------------------- the suite method


def test_context_cache_gives_the_same_scores(tiny_handle) -> None:
    settings = DolaSettings(bucket=(0, 1, 2))
    plain = score_answers(tiny_handle, "w7 w8 w9 " + PROMPT, ANSWERS, settings)
    cached = score_answers(tiny_handle, "w7 w8 w9 " + PROMPT, ANSWERS, settings, encode_context(tiny_handle, "w7 w8 w9"))
    assert cached.forward_tokens == plain.forward_tokens - 3
    assert cached.premature == plain.premature
    assert cached.unsteered == pytest.approx(plain.unsteered, abs=1e-4)
    assert cached.dola == pytest.approx(plain.dola, abs=1e-4)
    # a context that the prompt does not start with is ignored, not misused
    other = score_answers(tiny_handle, PROMPT, ANSWERS, settings, encode_context(tiny_handle, "w30 w31"))
    assert other.forward_tokens == score_answers(tiny_handle, PROMPT, ANSWERS, settings).forward_tokens


def _write(path, items) -> Path:
    import json

    path.write_text(json.dumps(items))
    return path


@pytest.fixture
def mc_file(tmp_path):
    items = [
        {"question": f"w{i} w{i + 1}", "best_answer": f"v{i}", "correct_answers": [f"v{i}", f"v{i} v{i + 1}"],
         "incorrect_answers": [f"w{i + 2}", f"v{i + 3} w{i}"]}
        for i in range(12)
    ]
    return _write(tmp_path / "mc.json", items)


@pytest.fixture
def completion_file(tmp_path):
    items = [{"prefix": f"w{i} w{i + 1} w{i + 2}", "completion": f"v{i}", "contradictions": [f"v{i + 1}", f"v{i + 2} v{i}", f"w{i}"]}
             for i in range(10)]
    return _write(tmp_path / "completion.json", items)


def _run(handle, path, n_test, settings, tmp_path):
    from pytest_steer.methods.base import RunContext
    from pytest_steer.storage.tensors import VectorCache

    method = DolaMethod()
    task = load_task("t", path)
    indices, counts = method.prepare(task, 0, n_test, seed=3)
    assert counts == {"test": n_test} and len(indices) == n_test
    return task, indices, method.run(handle, task, indices, settings, RunContext(VectorCache(tmp_path / "v"), 3))


def test_registry_gives_the_dola_method() -> None:
    from pytest_steer.methods import load_method

    method = load_method("dola")
    assert isinstance(method, DolaMethod) and method.settings_type is DolaSettings


def test_method_on_multiple_choice_questions(tiny_handle, mc_file, tmp_path) -> None:
    settings = DolaSettings(bucket=(0, 1))
    task, indices, outcome = _run(tiny_handle, mc_file, 8, settings, tmp_path)
    assert task.kind == "mc" and len(task.items) == 12
    assert list(indices) == sorted(indices) and len(set(indices)) == 8
    assert outcome.metric == "mc1" and set(outcome.secondary) == {"mc2", "mc3"}
    assert outcome.icl is None and outcome.vectors == {} and outcome.vector_metadata == {}
    # every per-question outcome is the metric of that question's scores
    for row, index in enumerate(indices):
        q = task.items[index]
        scores = score_answers(tiny_handle, mc_prompt(q.question), [mc_answer(a) for a in q.correct + q.incorrect], settings)
        base = mc_metrics(scores.unsteered[:2], scores.unsteered[2:])
        dola = mc_metrics(scores.dola[:2], scores.dola[2:])
        assert outcome.unsteered[row] == base.mc1 and outcome.steered[row] == dola.mc1
        assert outcome.secondary["mc2"][0][row] == pytest.approx(base.mc2, abs=1e-4)
        assert outcome.secondary["mc2"][1][row] == pytest.approx(dola.mc2, abs=1e-4)
        assert outcome.secondary["mc3"][0][row] == base.mc3 and outcome.secondary["mc3"][1][row] == dola.mc3
    histogram = outcome.diagnostics["premature_histogram"]
    assert set(histogram) == {"0", "1"} and sum(histogram.values()) == outcome.diagnostics["scored_tokens"] > 0
    assert sum(outcome.curves["premature_share"]) == pytest.approx(1.0, abs=1e-3)
    assert outcome.curves["premature_layers"] == [0, 1]
    assert outcome.chosen["top_premature_layer"] in (0, 1) and outcome.chosen["bucket"] == "layers 0,1"
    assert outcome.diagnostics["num_layers"] == 3
    assert outcome.test_items == [task.items[i].question for i in indices]


def test_mc_prompts_reuse_the_shared_context(tiny_handle, mc_file, tmp_path) -> None:
    """The instruction and demonstrations are encoded once, not once per question."""
    n_context = len(tiny_handle.tokenizer(mc_context())["input_ids"])
    _, _, outcome = _run(tiny_handle, mc_file, 4, DolaSettings(bucket=(0, 1)), tmp_path)
    task = load_task("t", mc_file)
    full = sum(score_answers(tiny_handle, mc_prompt(task.items[i].question),
                             [mc_answer(a) for a in task.items[i].correct + task.items[i].incorrect],
                             DolaSettings(bucket=(0, 1))).forward_tokens
               for i in DolaMethod().prepare(task, 0, 4, 3)[0])
    assert outcome.diagnostics["forward_tokens"] == full - 4 * n_context


def test_method_on_completions_uses_accuracy_with_ties(tiny_handle, completion_file, tmp_path) -> None:
    task, indices, outcome = _run(tiny_handle, completion_file, 10, DolaSettings(bucket="lower"), tmp_path)
    assert task.kind == "completion"
    assert outcome.metric == "accuracy" and outcome.secondary == {}
    assert set(outcome.unsteered.tolist()) <= {0.0, 1.0} and set(outcome.steered.tolist()) <= {0.0, 1.0}
    assert list(indices) == list(range(10))
    assert outcome.test_items == [item.prefix for item in task.items]
    for row, item in enumerate(task.items[:3]):
        answers = [" " + item.completion] + [" " + c for c in item.contradictions]
        scores = score_answers(tiny_handle, item.prefix, answers, DolaSettings(bucket="lower"))
        assert outcome.unsteered[row] == completion_correct(scores.unsteered[0], scores.unsteered[1:])
        assert outcome.steered[row] == completion_correct(scores.dola[0], scores.dola[1:])


def test_metric_must_fit_the_task_kind(tiny_handle, mc_file, completion_file, tmp_path) -> None:
    from pytest_steer.cases.settings import SettingsError

    with pytest.raises(SettingsError, match="metric 'mc2' does not apply to a completion task"):
        _run(tiny_handle, completion_file, 4, DolaSettings(metric="mc2"), tmp_path)
    with pytest.raises(SettingsError, match="metric 'accuracy' does not apply to a mc task"):
        _run(tiny_handle, mc_file, 4, DolaSettings(metric="accuracy"), tmp_path)
    _, _, outcome = _run(tiny_handle, mc_file, 4, DolaSettings(metric="mc2", bucket=(1,)), tmp_path)
    assert outcome.metric == "mc2" and set(outcome.secondary) == {"mc1", "mc3"}
    assert outcome.steered.tolist() != [] and all(0.0 <= x <= 1.0 for x in outcome.steered)
    with pytest.raises(SettingsError, match="bucket"):
        _run(tiny_handle, mc_file, 4, DolaSettings(bucket=(0, 7)), tmp_path)  # the tiny model has 3 layers


def test_a_scoring_error_names_the_file_and_item(tiny_handle, completion_file, tmp_path, monkeypatch) -> None:
    from pytest_steer.methods import dola

    def refuse(*args, **kwargs):
        raise ValueError("answer adds no token")

    monkeypatch.setattr(dola, "score_answers_many", refuse)
    with pytest.raises(TaskError, match=r"completion\.json: item 0: answer adds no token") as info:
        _run(tiny_handle, completion_file, 4, DolaSettings(), tmp_path)
    assert str(completion_file) in str(info.value)


def test_prepare_rejects_more_items_than_the_file_has(mc_file) -> None:
    task = load_task("t", mc_file)
    with pytest.raises(TaskError, match="has 12 items but n_test = 13") as info:
        DolaMethod().prepare(task, 0, 13, 0)
    assert str(mc_file) in str(info.value)
    (a, _), (b, _) = DolaMethod().prepare(task, 0, 6, 0), DolaMethod().prepare(task, 0, 6, 1)
    assert a == DolaMethod().prepare(task, 0, 6, 0)[0] and a != b


def test_prepare_rejects_word_pairs(tiny_task_file) -> None:
    with pytest.raises(TaskError, match="holds pairs items; dola needs mc or completion items") as info:
        DolaMethod().prepare(load_task("pairs", tiny_task_file), 0, 4, 0)
    assert str(tiny_task_file) in str(info.value)


def test_settings_validation() -> None:
    from pytest_steer.cases.settings import SettingsError, build_settings

    assert build_settings(DolaSettings, {"bucket": [2, 4]}, "w").bucket == (2, 4)
    assert build_settings(DolaSettings, {"bucket": [2, 4]}, "w").bucket_name() == "layers 2,4"
    assert build_settings(DolaSettings, {"bucket": "upper"}, "w").bucket_name() == "upper"
    for bad, field in (({"bucket": "middle"}, "bucket"), ({"bucket": []}, "bucket"), ({"alpha": -0.1}, "alpha"),
                       ({"alpha": 1.5}, "alpha"), ({"metric": "mc4"}, "metric"), ({"bucket": [-1]}, "bucket"),
                       ({"tie_tolerance": -0.1}, "tie_tolerance"), ({"tie_tolerance": 1.0}, "tie_tolerance"),
                       ({"divergence": "kl"}, "divergence")):
        with pytest.raises(SettingsError, match=f"w.{field}"):
            build_settings(DolaSettings, bad, "w")


@pytest.mark.parametrize("fixture", ["mc_file", "completion_file"])
def test_variants_in_one_pass_get_exactly_their_own_numbers(tiny_handle, fixture, request, tmp_path, monkeypatch) -> None:
    from pytest_steer.methods import dola
    from pytest_steer.methods.base import RunContext
    from pytest_steer.storage.tensors import VectorCache

    path = request.getfixturevalue(fixture)
    variants = [DolaSettings(bucket="lower"), DolaSettings(bucket="upper"), DolaSettings(bucket="upper", premature_norm=True)]
    method = DolaMethod()
    task = load_task("t", path)
    indices, _ = method.prepare(task, 0, 6, seed=3)
    context = RunContext(VectorCache(tmp_path / "v"), 3)
    passes = []
    real = dola._answer_pass
    monkeypatch.setattr(dola, "_answer_pass", lambda *a: passes.append(1) or real(*a))
    together = method.run_many(tiny_handle, task, indices, variants, context)
    assert len(passes) == len(indices)  # one forward pass per question for all three settings
    for settings, shared in zip(variants, together):
        alone = method.run(tiny_handle, task, indices, settings, context)
        for side in ("unsteered", "steered"):
            assert getattr(shared, side).tolist() == getattr(alone, side).tolist()
        assert {k: (u.tolist(), s.tolist()) for k, (u, s) in shared.secondary.items()} == \
               {k: (u.tolist(), s.tolist()) for k, (u, s) in alone.secondary.items()}
        assert (shared.chosen, shared.curves, shared.diagnostics, shared.metric) == \
               (alone.chosen, alone.curves, alone.diagnostics, alone.metric)


@pytest.mark.parametrize("fixture", ["mc_file", "completion_file"])
@pytest.mark.parametrize("cuts", [[2, 4], [1], [5], [1, 2, 3, 4, 5]])
def test_parts_in_any_order_combine_into_exactly_the_whole_pass(tiny_handle, fixture, cuts, request, tmp_path) -> None:
    import json

    from pytest_steer.methods.base import RunContext
    from pytest_steer.storage.tensors import VectorCache

    path = request.getfixturevalue(fixture)
    variants = [DolaSettings(bucket="lower"), DolaSettings(bucket="upper", premature_norm=True)]
    method = DolaMethod()
    task = load_task("t", path)
    indices, _ = method.prepare(task, 0, 6, seed=3)
    context = RunContext(VectorCache(tmp_path / "v"), 3)
    whole = method.run_many(tiny_handle, task, indices, variants, context)
    bounds = [0, *cuts, len(indices)]
    chunks = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
    # scored in reverse order (as another process may), each through JSON as the run stores it
    scored = {k: json.loads(json.dumps(method.run_part(tiny_handle, task, indices, variants, rows, context)))
              for k, rows in reversed(list(enumerate(chunks)))}
    joined = method.combine(tiny_handle, task, indices, variants,
                            [[scored[k][v] for k in range(len(chunks))] for v in range(len(variants))])
    for a, b in zip(whole, joined):
        assert a.unsteered.tolist() == b.unsteered.tolist() and a.steered.tolist() == b.steered.tolist()
        assert {k: (u.tolist(), s.tolist()) for k, (u, s) in a.secondary.items()} == \
               {k: (u.tolist(), s.tolist()) for k, (u, s) in b.secondary.items()}
        assert (a.chosen, a.curves, a.diagnostics, a.test_items) == (b.chosen, b.curves, b.diagnostics, b.test_items)
    with pytest.raises(ValueError, match="cover rows"):
        method.combine(tiny_handle, task, indices, variants, [[scored[0][v]] for v in range(len(variants))])

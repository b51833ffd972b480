"""Contrastive activation addition and the two-choice scoring on a tiny random model (mechanics, not numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_steer.methods.base import Control, RunContext
from pytest_steer.methods.caa import CaaMethod, Point, adds_at, extract_caa_vectors
from pytest_steer.methods.choices import ChoiceSet, score_choices
from pytest_steer.methods.hooks import HookReport, adds_everywhere
from pytest_steer.methods.scoring import TokenCounter, encode
from pytest_steer.methods.settings import CaaSettings
from pytest_steer.storage.tensors import VectorCache
from pytest_steer.tasks import Choice, TaskError, load_task, split_choices
from pytest_steer.tasks.prompts import choice_prompts, letter_text
from tests.conftest import build_tiny_model

N_ITEMS = 60


def choice_items(n: int = N_ITEMS, prefix: str = "q") -> list[dict[str, str]]:
    """Synthetic two-choice questions: q{i} with answers a{i} (matching) and b{i}."""
    return [{"question": f"{prefix}{i}", "matching": f"a{i}", "other": f"b{i}"} for i in range(n)]


def build_choice_model(folder: Path) -> Path:
    words = ["A", "B", ".", "Answer", ":"] + [f"{p}{i}" for p in "qabk" for i in range(N_ITEMS)]
    return build_tiny_model(folder, words=words)


@pytest.fixture(scope="module")
def choice_handle(tmp_path_factory: pytest.TempPathFactory):
    from pytest_steer.models.loader import ModelSpec, load_model

    folder = build_choice_model(tmp_path_factory.mktemp("choice") / "model")
    return load_model(ModelSpec("tinyab", "folder", str(folder)), tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def choice_task(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("abtask") / "behaviour.json"
    path.write_text(json.dumps(choice_items()))
    return load_task("behaviour", path)


def test_choice_prompts_balance_the_matching_letter():
    items = [Choice(f"q{i}", f"a{i}", f"b{i}") for i in range(6)]
    prompts, matching = choice_prompts(items)
    assert matching == [0, 1, 0, 1, 0, 1]
    assert prompts[0] == "q0\nA. a0\nB. b0\nAnswer:" and prompts[1] == "q1\nA. b1\nB. a1\nAnswer:"


def test_two_choice_task_file_is_read_and_checked(tmp_path: Path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(choice_items(4)))
    task = load_task("good", good)
    assert task.kind == "ab" and task.items[0] == Choice("q0", "a0", "b0")
    cases = {
        "same.json": ([{"question": "q", "matching": "x", "other": "x"}], "item 0: 'x' is both in 'matching' and in 'other'"),
        "missing.json": ([{"question": "q", "matching": "x"}], "item 0: missing field 'other'"),
        "twice.json": ([{"question": "q", "matching": "x", "other": "y"}] * 2, "item 1: duplicate question 'q'"),
        "lines.json": ([{"question": "q", "matching": "x\ny", "other": "z"}], "item 0: field 'matching' must be a single line"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(data))
        with pytest.raises(TaskError, match=message):
            load_task(name, path)


def test_split_choices_is_seeded_disjoint_and_checked(choice_task):
    a, b = split_choices(choice_task, 10, 20, 0), split_choices(choice_task, 10, 20, 0)
    assert a == b and len(a.train) == 30
    assert not set(a.test) & set(a.dev) and not set(a.test) & set(a.train)
    assert split_choices(choice_task, 10, 20, 1).test != a.test
    with pytest.raises(TaskError, match="has 60 items but n_dev=30, n_test=31"):
        split_choices(choice_task, 30, 31, 0, min_train=0)


def test_choice_scores_are_the_letters_logits(choice_handle):
    items = [Choice(f"q{i}", f"a{i}", f"b{i}") for i in range(7)]
    data = ChoiceSet.build(choice_handle, items)
    scores = score_choices(choice_handle, data, 1, None, TokenCounter(), batch_size=3, max_rows=8, last_token_only=True)
    tok = choice_handle.tokenizer
    a_id, b_id = tok("A")["input_ids"][-1], tok("B")["input_ids"][-1]
    with torch.inference_mode():
        logits = choice_handle.model(**encode(tok, data.prompts)).logits[:, -1, :].double()
    for i, m in enumerate(data.matching):
        match, other = (logits[i, a_id], logits[i, b_id]) if m == 0 else (logits[i, b_id], logits[i, a_id])
        assert scores.chose[i, 0] == float(match > other)
        assert scores.mass[i, 0] == pytest.approx(float(torch.sigmoid(match - other)), abs=1e-5)


def test_caa_vector_is_the_mean_difference_at_the_answer_letter(choice_handle, choice_task):
    splits = split_choices(choice_task, 10, 20, 0)
    settings = CaaSettings(n_train=12, batch_size=5)
    vectors = extract_caa_vectors(choice_handle, splits, settings, TokenCounter())
    prompts, matching = choice_prompts(splits.train[:12])
    tok, model = choice_handle.tokenizer, choice_handle.model
    with torch.inference_mode():
        plus = model(**encode(tok, [p + letter_text(m) for p, m in zip(prompts, matching)]), output_hidden_states=True)
        minus = model(**encode(tok, [p + letter_text(1 - m) for p, m in zip(prompts, matching)]), output_hidden_states=True)
    layers = choice_handle.adapter.num_layers
    assert vectors.shape == (layers, choice_handle.adapter.hidden_size)
    for l in range(layers - 1):  # the last hidden state is after the final norm, not block output
        expected = (plus.hidden_states[l + 1][:, -1] - minus.hidden_states[l + 1][:, -1]).mean(dim=0)
        assert torch.allclose(vectors[l], expected, atol=1e-5)


def _next_block_inputs(handle, batch, steer=None):
    """Block 2's input (block 1's output as steered) on a plain pass and, within `steer`, a steered one."""
    seen: list[torch.Tensor] = []
    probe = handle.adapter.block(handle.model, 2).register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        with torch.inference_mode():
            handle.model(**batch)
            with steer:
                handle.model(**batch)
    finally:
        probe.remove()
    return seen


def test_caa_adds_the_multiple_at_the_answer_position_only(choice_handle):
    vector = torch.randn(choice_handle.adapter.hidden_size)
    reports: dict[int, HookReport] = {}
    batch = encode(choice_handle.tokenizer, ["q1\nA. a1\nB. b1\nAnswer:"] * 2)
    steer = adds_at(choice_handle, [Point(1, 2.0), Point(1, -0.5)], {1: vector}, reports)(torch.tensor([0, 1]))
    plain, steered = _next_block_inputs(choice_handle, batch, steer)
    assert torch.equal(steered[:, :-1], plain[:, :-1])  # the question's positions are untouched
    for row, multiplier in ((0, 2.0), (1, -0.5)):
        assert torch.allclose(steered[row, -1], plain[row, -1] + multiplier * vector, atol=1e-5)
    assert reports[1].fired_and_changed and reports[1].rows == 2


def test_adds_everywhere_adds_at_every_position_with_the_rows_scale(choice_handle):
    hidden = choice_handle.adapter.hidden_size
    vectors = {1: torch.randn(hidden), 2: torch.randn(hidden)}
    batch = encode(choice_handle.tokenizer, ["q1\nA. a1\nB. b1\nAnswer:"] * 3)
    reports: dict[int, HookReport] = {}
    intervene = adds_everywhere(lambda l: choice_handle.adapter.block(choice_handle.model, l), vectors,
                                torch.tensor([0.0, 1.5, -3.0]), reports)
    plain, steered = _next_block_inputs(choice_handle, batch, intervene(torch.tensor([0, 1, 2])))
    assert torch.equal(steered[0], plain[0])  # scale 0: unchanged
    for row, scale in ((1, 1.5), (2, -3.0)):
        assert torch.allclose(steered[row], plain[row] + scale * vectors[1], atol=1e-5)  # at every position
    assert set(reports) == {1, 2} and reports[1].rows == 2 and reports[2].fired_and_changed


def _context(tmp_path: Path, control: Control | None = None) -> RunContext:
    return RunContext(cache=VectorCache(tmp_path / "vectors", "test"), seed=0, control=control)


def test_caa_run_chooses_on_dev_and_its_replay_and_quick_path_give_its_test_numbers(choice_handle, choice_task, tmp_path):
    method = CaaMethod()
    splits, counts = method.prepare(choice_task, 10, 16, 0)
    assert counts == {"train": 34, "dev": 10, "test": 16}
    settings = CaaSettings(n_train=20, multipliers=(1.0, 4.0), batch_size=4)
    control = Control("knowledge", tuple(Choice(f"k{i}", f"a{i}", f"b{i}") for i in range(9)))
    context = _context(tmp_path, control)
    outcome = method.run(choice_handle, choice_task, splits, settings, context)
    layers = choice_handle.adapter.num_layers
    assert outcome.chosen["layer"] in range(layers) and outcome.chosen["multiplier"] in (1.0, 4.0)
    assert outcome.curves["dev_layers"] == list(range(layers)) and len(outcome.curves["dev_accuracy"]) == layers
    assert outcome.unsteered.shape == outcome.steered.shape == (16,)
    assert set(outcome.secondary) == {"mass", "opposite"}
    assert outcome.vectors["caa_vector"].shape == (choice_handle.adapter.hidden_size,)
    assert outcome.control is not None and outcome.control.task == "knowledge" and len(outcome.control.items) == 9
    # the chosen intervention is the best on dev: no other scores more matching choices there
    assert max(outcome.curves["dev_accuracy"]) <= max(outcome.curves["dev_accuracy_by_multiplier"]) + 1e-12
    replayed = method.replay(choice_handle, splits, settings, {"caa_vector": outcome.vectors["caa_vector"]}, outcome.chosen)
    assert np.array_equal(replayed, outcome.steered)
    quick = method.quick(choice_handle, splits, settings, {"caa_vector": outcome.vectors["caa_vector"]}, outcome.chosen,
                         _context(tmp_path, control))
    assert np.array_equal(quick.steered, outcome.steered) and np.array_equal(quick.unsteered, outcome.unsteered)
    assert np.array_equal(quick.secondary["opposite"][1], outcome.secondary["opposite"][1])
    assert np.array_equal(quick.control.steered, outcome.control.steered)
    again = method.run(choice_handle, choice_task, splits, settings, _context(tmp_path))  # cached vectors, no control
    assert again.diagnostics["cache"]["hit"] and again.control is None
    assert np.array_equal(again.steered, outcome.steered)


def test_caa_replay_refuses_a_vector_that_does_not_fit(choice_handle, choice_task, tmp_path):
    from pytest_steer.methods.search import ReplayError

    method = CaaMethod()
    splits, _ = method.prepare(choice_task, 10, 16, 0)
    settings = CaaSettings(n_train=10)
    wide = {"caa_vector": torch.ones(choice_handle.adapter.hidden_size + 1)}
    with pytest.raises(ReplayError, match="residual stream is"):
        method.replay(choice_handle, splits, settings, wide, {"layer": 1, "multiplier": 1.0})
    fits = {"caa_vector": torch.ones(choice_handle.adapter.hidden_size)}
    with pytest.raises(ReplayError, match="'multiplier' is 'x'"):
        method.replay(choice_handle, splits, settings, fits, {"layer": 1, "multiplier": "x"})
    with pytest.raises(ReplayError, match="accepted at block 99"):
        method.replay(choice_handle, splits, settings, fits, {"layer": 99, "multiplier": 1.0})


def test_task_vectors_score_the_control_under_their_chosen_intervention(choice_handle, tiny_task_file, tmp_path):
    """The side effect of the layer-search methods: the control questions under the chosen intervention, and the
    quick path's control equal to the full run's."""
    from pytest_steer.methods.settings import TaskVectorSettings
    from pytest_steer.methods.task_vector import TaskVectorMethod

    task = load_task("tiny", tiny_task_file)
    method = TaskVectorMethod()
    splits, _ = method.prepare(task, 10, 12, 0)
    settings = TaskVectorSettings(n_prompts=6, n_shots=3, batch_size=8)
    control = Control("knowledge", tuple(Choice(f"k{i}", f"a{i}", f"b{i}") for i in range(10)))
    outcome = method.run(choice_handle, task, splits, settings, _context(tmp_path, control))
    assert outcome.control is not None and outcome.control.task == "knowledge" and len(outcome.control.items) == 10
    assert set(np.unique(outcome.control.steered)) <= {0.0, 1.0}
    plain = method.run(choice_handle, task, splits, settings, _context(tmp_path))
    assert plain.control is None and np.array_equal(plain.steered, outcome.steered)  # the control changes no score
    tensors = {"task_vector": outcome.vectors["task_vector"]}
    quick = method.quick(choice_handle, splits, settings, tensors, outcome.chosen, _context(tmp_path, control))
    assert np.array_equal(quick.control.steered, outcome.control.steered)
    assert np.array_equal(quick.control.unsteered, outcome.control.unsteered)


def test_dola_scores_the_control_with_and_without_its_contrast_in_one_pass_and_in_parts(choice_handle, tmp_path):
    """DoLa's side effect: each control question as a completion (the right letter against the other) under the
    final layer and under DoLa, per variant; the same from run_many and from parts joined with the context."""
    from pytest_steer.methods.dola import DolaMethod
    from pytest_steer.methods.settings import DolaSettings

    path = tmp_path / "facts.json"
    path.write_text(json.dumps([{"prefix": f"q{i} a{i}", "completion": f"b{i}", "contradictions": [f"k{i}"]}
                                for i in range(8)]))
    task = load_task("facts", path)
    method = DolaMethod()
    indices, _ = method.prepare(task, 0, 8, seed=0)
    variants = [DolaSettings(bucket="lower"), DolaSettings(bucket="upper")]
    control = Control("knowledge", tuple(Choice(f"k{i}", f"a{i}", f"b{i}") for i in range(9)))
    whole = method.run_many(choice_handle, task, indices, variants, _context(tmp_path, control))
    plain = method.run_many(choice_handle, task, indices, variants, _context(tmp_path))
    for with_control, without in zip(whole, plain):
        assert with_control.control is not None and len(with_control.control.items) == 9 and without.control is None
        assert np.array_equal(with_control.steered, without.steered)  # the control changes no score of the task
        assert set(np.unique(with_control.control.steered)) <= {0.0, 1.0}
    assert np.array_equal(whole[0].control.unsteered, whole[1].control.unsteered)  # the final layer is shared
    parts = [method.run_part(choice_handle, task, indices, variants, rows, _context(tmp_path)) for rows in ([0, 1, 2], [3, 4, 5, 6, 7])]
    joined = method.combine(choice_handle, task, indices, variants, [[p[v] for p in parts] for v in range(2)],
                            _context(tmp_path, control))
    for a, b in zip(whole, joined):
        assert np.array_equal(a.control.steered, b.control.steered) and a.control.items == b.control.items


def test_only_cases_with_the_same_control_share_a_pass(tmp_path):
    """Variants of one DoLa task share a pass (and its control) only when their side-effect controls agree."""
    from pytest_steer.cases.casefile import Case, load_case_file
    from pytest_steer.run.options import SteerOptions
    from pytest_steer.run.session import SteerSession

    path = tmp_path / "steer_x.toml"
    path.write_text('[defaults]\nn_test = 20\n[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["dola"]\n'
                    'tasks = ["truthful-mc"]\nvariant = "lower"\nsettings = { bucket = "lower" }\n'
                    '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["dola"]\ntasks = ["truthful-mc"]\n'
                    'variant = "upper"\nsettings = { bucket = "upper" }\n'
                    '[[suite]]\nmodels = ["smollm2-135m"]\nmethods = ["dola"]\ntasks = ["truthful-mc"]\n'
                    'variant = "bare"\nsettings = { bucket = "q4" }\n'
                    '[[case]]\nvariant = "bare"\ncontrol = ""\n')
    cases = {c.variant: c for c in load_case_file(path) if isinstance(c, Case)}
    assert cases["bare"].control_path is None and cases["lower"].control_path is not None
    options = SteerOptions(cache_dir=tmp_path / "cache", baseline_dir=tmp_path / "b", update=False, threshold=0.1,
                           tolerance=0.05, min_recovery=None, report_path=None)
    session = SteerSession(options, selected=list(cases.values()))
    assert session.siblings(cases["lower"]) == [cases["lower"], cases["upper"]]
    assert session.siblings(cases["bare"]) == [cases["bare"]]

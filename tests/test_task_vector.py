"""The task-vector method (and the layer-search skeleton it shares) on the tiny model."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_steer.methods import load_method
from pytest_steer.methods.base import RunContext
from pytest_steer.methods.hooks import capture_last_token
from pytest_steer.methods.scoring import encode
from pytest_steer.methods.search import search_layers
from pytest_steer.methods.settings import TaskVectorSettings
from pytest_steer.methods.task_vector import TaskVectorMethod, extract_task_vectors, replace_at_layers
from pytest_steer.cases.settings import SettingsError
from pytest_steer.storage.tensors import VectorCache
from pytest_steer.tasks import MCQuestion, Pair, Task, TaskError, load_task, split_task
from pytest_steer.tasks.prompts import icl_prompts, zero_shot_prompt

from .conftest import tiny_pairs

SETTINGS = TaskVectorSettings(n_prompts=6, n_shots=3, batch_size=32)


def _tiny_task() -> Task:
    return Task("tiny", "pairs", tuple(Pair(p["input"], p["output"]) for p in tiny_pairs()), "memory")


def test_registry_gives_the_task_vector_method() -> None:
    method = load_method("task_vector")
    assert isinstance(method, TaskVectorMethod) and method.settings_type is TaskVectorSettings


def test_prepare_splits_word_pairs_and_counts_them(tiny_task_file: Path) -> None:
    task = load_task("tiny", tiny_task_file)
    splits, counts = TaskVectorMethod().prepare(task, 10, 12, 3)
    assert splits == split_task(task, 10, 12, 3)
    assert counts == {"demos": 60 - 22, "dev": 10, "test": 12}


def test_prepare_refuses_a_task_of_another_kind() -> None:
    task = Task("mc", "mc", tuple(MCQuestion(f"q{i}", ("a",), ("b",)) for i in range(40)), "/src/mc.json")
    with pytest.raises(TaskError, match="task_vector needs pairs items") as info:
        TaskVectorMethod().prepare(task, 5, 5, 0)
    assert "/src/mc.json" in str(info.value)


def test_search_layers_defaults_to_every_block_and_checks_the_range() -> None:
    assert search_layers(None, 4, "task_vector") == [0, 1, 2, 3]
    assert search_layers((2, 0), 4, "task_vector") == [2, 0]
    with pytest.raises(SettingsError, match=r"task_vector\.layers: \[4\] out of range for a model with 4 blocks"):
        search_layers((1, 4), 4, "task_vector")


def test_task_vector_is_the_mean_block_output_of_its_prompts(tiny_handle, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_steer.methods import task_vector

    splits = split_task(_tiny_task(), n_dev=10, n_test=12, seed=1)
    seen: list[str] = []
    real_encode = task_vector.encode
    monkeypatch.setattr(task_vector, "encode", lambda tok, prompts: seen.extend(prompts) or real_encode(tok, prompts))
    vectors = extract_task_vectors(tiny_handle, splits.demos, SETTINGS, 1)
    monkeypatch.undo()
    assert vectors.shape == (tiny_handle.adapter.num_layers, tiny_handle.adapter.hidden_size)
    assert len(seen) == SETTINGS.n_prompts
    blocks = tiny_handle.adapter.blocks(tiny_handle.model)
    with capture_last_token(blocks) as captured, torch.inference_mode():
        for prompt in seen:  # one at a time: the mean does not depend on batching or padding
            tiny_handle.model(**encode(tiny_handle.tokenizer, [prompt]))
    for layer in range(len(blocks)):
        assert torch.allclose(vectors[layer], torch.cat(captured[layer]).mean(dim=0), atol=1e-5)
    assert torch.equal(vectors, extract_task_vectors(tiny_handle, splits.demos, SETTINGS, 1))  # seeded
    assert not torch.equal(vectors, extract_task_vectors(tiny_handle, splits.demos, SETTINGS, 2))


def test_extraction_needs_more_demos_than_shots(tiny_handle) -> None:
    demos = tuple(Pair(f"w{i}", f"v{i}") for i in range(3))
    with pytest.raises(ValueError, match="more than 3 demonstrations, the pool has 3"):
        extract_task_vectors(tiny_handle, demos, SETTINGS, 0)


def test_task_vector_prompts_never_use_test_items(tiny_handle, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_steer.methods import task_vector

    splits = split_task(_tiny_task(), n_dev=10, n_test=12, seed=1)
    seen: list[str] = []
    real_encode = task_vector.encode
    monkeypatch.setattr(task_vector, "encode", lambda tok, prompts: seen.extend(prompts) or real_encode(tok, prompts))
    extract_task_vectors(tiny_handle, splits.demos, TaskVectorSettings(n_prompts=8, n_shots=3), 1)
    held_out = {p.input for p in splits.test + splits.dev}
    assert seen and not any(f"Q: {x}\n" in prompt for prompt in seen for x in held_out)
    icl = icl_prompts(splits.demos, splits.test, 3, random.Random(0))
    test_inputs = {p.input for p in splits.test}
    for prompt, query in zip(icl, splits.test):
        demos_part = prompt.rsplit("Q: ", 1)[0]
        assert not any(f"Q: {x}\n" in demos_part for x in test_inputs), query


def test_replace_at_layers_writes_the_layers_vector(tiny_handle) -> None:
    blocks = tiny_handle.adapter.blocks(tiny_handle.model)
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    batch = encode(tiny_handle.tokenizer, [zero_shot_prompt("w1"), zero_shot_prompt("w2")])
    reports: dict = {}
    with torch.inference_mode():
        with capture_last_token(blocks) as clean:
            tiny_handle.model(**batch)
        # interventions: 0 -> block 2, 1 -> block 0; row 0 gets intervention 1, row 1 intervention 0
        with replace_at_layers(tiny_handle, [2, 0], vectors, reports)(torch.tensor([1, 0])), \
                capture_last_token(blocks) as steered:
            tiny_handle.model(**batch)
    assert torch.allclose(steered[0][0][0], vectors[0]) and torch.equal(steered[0][0][1], clean[0][0][1])
    assert torch.allclose(steered[2][0][1], vectors[2])
    assert set(reports) == {0, 2} and all(r.fired_and_changed and r.rows == 2 for r in reports.values())


def test_task_vector_run_on_tiny_model(tiny_handle, tmp_path: Path) -> None:
    task = _tiny_task()
    splits = split_task(task, n_dev=10, n_test=12, seed=3)
    context = RunContext(cache=VectorCache(tmp_path), seed=3)
    first = TaskVectorMethod().run(tiny_handle, task, splits, SETTINGS, context)
    assert first.curves["dev_layers"] == [0, 1, 2] and len(first.curves["dev_accuracy"]) == 3  # every layer searched
    assert first.chosen["layer"] == int(np.argmax(first.curves["dev_accuracy"]))  # the lowest layer wins ties
    assert first.chosen["relative_depth"] == round(first.chosen["layer"] / 3, 3)
    assert first.steered.shape == first.unsteered.shape == first.icl.shape == (12,)
    for outcomes in (first.steered, first.unsteered, first.icl):
        assert set(outcomes.tolist()) <= {0.0, 1.0}
    assert first.metric == "accuracy" and first.secondary == {}
    assert first.diagnostics["hook"]["calls"] > 0 and first.diagnostics["hook"]["max_abs_change"] > 0
    assert first.diagnostics["hook"]["min_change_over_sweep"] > 0
    assert first.diagnostics["forward_tokens"] > 0 and first.diagnostics["forward_passes"] > 0
    assert first.diagnostics["cache"]["hit"] is False and Path(first.diagnostics["cache"]["path"]).is_file()
    assert first.test_items == [p.input for p in splits.test]
    assert first.vectors["task_vector"].shape == (32,)
    assert first.vector_metadata["layer"] == str(first.chosen["layer"])
    json.dumps(first.diagnostics)  # goes into the baseline file as it is

    second = TaskVectorMethod().run(tiny_handle, task, splits, SETTINGS, context)
    assert second.diagnostics["cache"]["hit"] is True
    assert second.diagnostics["forward_tokens"] < first.diagnostics["forward_tokens"]  # extraction skipped
    assert np.array_equal(first.steered, second.steered) and np.array_equal(first.icl, second.icl)
    assert first.curves == second.curves
    assert torch.equal(first.vectors["task_vector"], second.vectors["task_vector"])


def test_run_searches_only_the_given_layers_and_reports_progress(tiny_handle, tmp_path: Path) -> None:
    task = _tiny_task()
    splits = split_task(task, n_dev=10, n_test=12, seed=4)
    settings = TaskVectorSettings(n_prompts=6, n_shots=3, batch_size=32, layers=(2,))
    calls: list[tuple[str, int, int]] = []
    context = RunContext(cache=VectorCache(tmp_path), seed=4, progress=lambda *a: calls.append(a))
    outcome = TaskVectorMethod().run(tiny_handle, task, splits, settings, context)
    assert outcome.curves["dev_layers"] == [2] and outcome.chosen["layer"] == 2
    assert len(outcome.curves["dev_accuracy"]) == 1
    labels = [label for label, _, _ in calls]
    assert any(label.startswith("extracting task vectors (6 prompts)") for label in labels)
    search = [(done, total) for label, done, total in calls if label == "task_vector: dev search over 1 interventions, prompts"]
    assert search[0] == (0, 10) and search[-1] == (10, 10) and len(search) >= 3  # the dev prompts, batch by batch
    assert all(0 <= done <= total for _, done, total in calls)
    with pytest.raises(SettingsError, match="out of range"):
        TaskVectorMethod().run(tiny_handle, task, splits, TaskVectorSettings(layers=(5,)), RunContext(VectorCache(tmp_path), 3))


@pytest.mark.parametrize("chosen, message", [
    ({"layer": 1.5}, "the accepted setting's 'layer' is 1.5, expected a whole number"),
    ({"layer": True}, "the accepted setting's 'layer' is True, expected a whole number"),
    ({}, "the accepted setting's 'layer' is None"),
    ({"layer": 99}, "was accepted at block 99"),
])
def test_a_stored_setting_that_is_not_a_layer_is_refused_not_rounded(tiny_handle, chosen: dict, message: str) -> None:
    from pytest_steer.methods.search import ReplayError

    vector = torch.zeros(tiny_handle.adapter.hidden_size)
    with pytest.raises(ReplayError, match=re.escape(message)):
        TaskVectorMethod().replay_point(tiny_handle, {"task_vector": vector}, chosen)

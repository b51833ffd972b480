"""Mechanics of batched scoring, the prefix cache and the steering hooks, on a tiny model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_steer.methods.base import RunContext
from pytest_steer.methods.hooks import capture_last_token, edit_last_token
from pytest_steer.methods.scoring import TokenCounter, encode, first_target_ids, score_variants
from pytest_steer.methods.task_vector import TaskVectorMethod, TaskVectorSettings, replace_at_layers
from pytest_steer.store import VectorCache
from pytest_steer.tasks import Pair, Task, few_shot_prompt, split_task, zero_shot_prompt

from .conftest import build_tiny_model, tiny_pairs

PROMPTS = [zero_shot_prompt(f"w{i}") for i in range(7)] + [few_shot_prompt([Pair("w1", "v1"), Pair("w2", "v2")], "w9")]
TARGETS = [" v1"] * 8


def test_first_target_id_is_the_first_token_the_target_adds(tiny_handle) -> None:
    tok = tiny_handle.tokenizer
    ids = first_target_ids(tok, ["Q: w3\nA:"], [" v3"])
    assert ids == [tok.convert_tokens_to_ids("v3")]


def test_first_target_id_accounts_for_bos(tmp_path: Path) -> None:
    from pytest_steer.models.loader import ModelSpec, load_model

    handle = load_model(ModelSpec("bos", "folder", str(build_tiny_model(tmp_path / "m", bos=True))), tmp_path / "c")
    batch = encode(handle.tokenizer, ["Q: w3\nA:"])
    assert int(batch["input_ids"][0, 0]) == handle.tokenizer.convert_tokens_to_ids("<s>")
    assert first_target_ids(handle.tokenizer, ["Q: w3\nA:"], [" v3"]) == [handle.tokenizer.convert_tokens_to_ids("v3")]


def test_left_padding_and_positions(tiny_handle) -> None:
    batch = encode(tiny_handle.tokenizer, ["Q: w1\nA:", few_shot_prompt([Pair("w1", "v1")], "w2")])
    assert batch["attention_mask"][:, -1].all()
    assert batch["attention_mask"][0, 0] == 0  # the short prompt is padded on the left
    assert batch["position_ids"][0, -1] == batch["attention_mask"][0].sum() - 1


def test_padded_batch_matches_single_prompts(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    together = score_variants(tiny_handle, PROMPTS, ids, batch_size=8, reuse_prefix=False)
    alone = [score_variants(tiny_handle, [p], [i], batch_size=1, reuse_prefix=False) for p, i in zip(PROMPTS, ids)]
    single = torch.cat([a.target_logprob for a in alone])
    assert torch.allclose(together.target_logprob, single, atol=1e-4)


def test_prefix_cache_gives_the_same_numbers_as_full_prompts(tiny_handle) -> None:
    ids = first_target_ids(tiny_handle.tokenizer, PROMPTS, TARGETS)
    vectors = torch.randn(3, 32) * 5
    layers = [0, 1, 2]
    results = []
    for reuse in (True, False):
        reports: dict = {}
        counter = TokenCounter()
        scores = score_variants(tiny_handle, PROMPTS, ids, 3, replace_at_layers(tiny_handle, layers, vectors, reports),
                                batch_size=4, max_rows=5, counter=counter, reuse_prefix=reuse)
        assert all(reports[l].fired_and_changed for l in layers)
        results.append((scores, counter.tokens))
    (cached, cached_tokens), (full, full_tokens) = results
    assert torch.allclose(cached.target_logprob, full.target_logprob, atol=1e-4)
    assert torch.equal(cached.top1, full.top1)
    assert cached_tokens < full_tokens  # the point of the prefix cache


def test_edit_hook_handles_tuple_and_tensor_outputs() -> None:
    class TupleBlock(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
            return (x * 1.0, None)

    class TensorBlock(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 1.0

    x = torch.zeros(2, 3, 4)
    for block in (TupleBlock(), TensorBlock()):
        with edit_last_token(block, lambda last: last + 1.0) as report:
            out = block(x)
        hidden = out[0] if isinstance(out, tuple) else out
        assert torch.equal(hidden[:, -1], torch.ones(2, 4))
        assert torch.equal(hidden[:, :-1], torch.zeros(2, 2, 4))
        assert report.calls == 1 and report.fired_and_changed
        assert not block._forward_hooks  # removed on exit


def test_hook_is_removed_even_when_the_forward_fails() -> None:
    block = torch.nn.Linear(4, 4)
    with pytest.raises(RuntimeError):
        with edit_last_token(block, lambda last: last):
            block(torch.zeros(2, 3, 5))
    assert not block._forward_hooks


def test_a_no_op_edit_is_reported_as_unchanged() -> None:
    block = torch.nn.Identity()
    with edit_last_token(block, lambda last: last) as report:
        block(torch.ones(1, 2, 3))
    assert report.calls == 1 and not report.fired_and_changed


def test_replacing_block_output_changes_later_blocks_only(tiny_handle) -> None:
    blocks = tiny_handle.adapter.blocks(tiny_handle.model)
    batch = encode(tiny_handle.tokenizer, PROMPTS[:3])
    with torch.inference_mode():
        with capture_last_token(blocks) as clean:
            tiny_handle.model(**batch)
        vector = torch.full((32,), 3.0)
        with edit_last_token(blocks[1], lambda last: vector.expand_as(last)), capture_last_token(blocks) as steered:
            tiny_handle.model(**batch)
    assert torch.equal(clean[0][0], steered[0][0])  # below the edited block: untouched
    assert torch.allclose(steered[1][0], vector.expand(3, 32))  # the block's output is the vector
    assert not torch.allclose(clean[2][0], steered[2][0])  # above: changed


def test_task_vector_run_on_tiny_model(tiny_handle, tmp_path: Path) -> None:
    task = Task("tiny", tuple(Pair(p["input"], p["output"]) for p in tiny_pairs()), "memory")
    splits = split_task(task, n_dev=10, n_test=12, seed=3)
    settings = TaskVectorSettings(n_prompts=6, n_shots=3, batch_size=8)
    context = RunContext(cache=VectorCache(tmp_path), seed=3)
    first = TaskVectorMethod().run(tiny_handle, task, splits, settings, context)
    assert len(first.curves["dev_accuracy"]) == 3  # every layer searched
    assert first.chosen["layer"] == int(np.argmax(first.curves["dev_accuracy"]))
    assert first.steered.shape == first.unsteered.shape == first.ceiling.shape == (12,)
    assert first.diagnostics["hook"]["calls"] > 0 and first.diagnostics["hook"]["max_abs_change"] > 0
    assert first.diagnostics["cache"]["hit"] is False
    assert set(first.test_items) == {p.input for p in splits.test}
    second = TaskVectorMethod().run(tiny_handle, task, splits, settings, context)
    assert second.diagnostics["cache"]["hit"] is True
    assert np.array_equal(first.steered, second.steered)
    assert first.curves == second.curves


def test_task_vector_prompts_never_use_test_items(tiny_handle, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_steer.methods import task_vector

    task = Task("tiny", tuple(Pair(p["input"], p["output"]) for p in tiny_pairs()), "memory")
    splits = split_task(task, n_dev=10, n_test=12, seed=1)
    seen: list[str] = []
    real_encode = task_vector.encode
    monkeypatch.setattr(task_vector, "encode", lambda tok, prompts: seen.extend(prompts) or real_encode(tok, prompts))
    task_vector.extract_task_vectors(tiny_handle, splits.demos, TaskVectorSettings(n_prompts=8, n_shots=3), 1)
    test_inputs = {p.input for p in splits.test}
    assert seen and not any(f"Q: {x}\n" in prompt for prompt in seen for x in test_inputs)
    rng = random.Random(0)
    icl = task_vector.icl_prompts(splits.demos, splits.test, 3, rng)
    for prompt, query in zip(icl, splits.test):
        demos_part = prompt.rsplit("Q: ", 1)[0]
        assert not any(f"Q: {x}\n" in demos_part for x in test_inputs), query

"""Tests for pytest_steer.methods.hooks: last-token reads and edits at a module's output or input."""

from __future__ import annotations

import pytest
import torch

from pytest_steer.methods.hooks import HookReport, capture_last_token, edits_at, last_token_hooks, silent_layers
from pytest_steer.methods.scoring import encode
from pytest_steer.tasks.prompts import zero_shot_prompt


class TupleBlock(torch.nn.Module):
    """Returns `(hidden, extra)` like decoder blocks of older transformers."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        return (x * 1.0, "extra")


class TensorBlock(torch.nn.Module):
    """Returns a bare tensor like decoder blocks of recent transformers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


class TwoInputs(torch.nn.Module):
    """Records what it was called with; its second argument must pass through an input hook untouched."""

    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        self.seen = x.clone()
        return x * scale


def _hidden(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[index,return-value]


# ---------------------------------------------------------------- editing at the output


@pytest.mark.parametrize("block", [TupleBlock(), TensorBlock()], ids=["tuple", "tensor"])
def test_output_edit_handles_tuple_and_tensor_outputs(block: torch.nn.Module) -> None:
    x = torch.zeros(2, 3, 4)
    with last_token_hooks([block], "output", lambda i, last: last + 1.0) as (report,):
        out = block(x)
    hidden = _hidden(out)
    assert torch.equal(hidden[:, -1], torch.ones(2, 4))
    assert torch.equal(hidden[:, :-1], torch.zeros(2, 2, 4))
    if isinstance(out, tuple):
        assert out[1] == "extra"  # the rest of the tuple is kept
    assert (report.calls, report.rows, report.max_abs_change) == (1, 2, 1.0)
    assert report.fired_and_changed
    assert not block._forward_hooks  # removed on exit
    assert torch.equal(_hidden(block(x)), torch.zeros(2, 3, 4))  # and no longer edits


def test_fn_gets_the_module_index_and_each_module_its_own_report() -> None:
    blocks = [TensorBlock(), TensorBlock(), TensorBlock()]
    called: list[int] = []

    def fn(i: int, last: torch.Tensor) -> torch.Tensor | None:
        called.append(i)
        return None if i == 1 else last + (i + 1)

    with last_token_hooks(blocks, "output", fn) as reports:
        outs = [block(torch.zeros(1, 2, 3)) for block in blocks]
        blocks[2](torch.zeros(4, 2, 3))
    assert called == [0, 1, 2, 2]
    assert [o[0, -1, 0].item() for o in outs] == [1.0, 0.0, 3.0]
    assert [(r.calls, r.rows) for r in reports] == [(1, 1), (0, 0), (2, 5)]
    assert [r.max_abs_change for r in reports] == [1.0, 0.0, 3.0]


def test_edit_is_cast_to_the_activation_dtype() -> None:
    block = TensorBlock().to(torch.bfloat16)
    x = torch.zeros(1, 2, 3, dtype=torch.bfloat16)
    with last_token_hooks([block], "output", lambda i, last: torch.full(last.shape, 2.0, dtype=torch.float64)):
        out = block(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out[0, -1], torch.full((3,), 2.0, dtype=torch.bfloat16))


def test_a_no_op_edit_is_reported_as_unchanged() -> None:
    block = torch.nn.Identity()
    with last_token_hooks([block], "output", lambda i, last: last) as (report,):
        block(torch.ones(1, 2, 3))
    assert report.calls == 1 and report.max_abs_change == 0.0 and not report.fired_and_changed


def test_a_read_leaves_the_output_alone_and_counts_no_edit() -> None:
    block = TensorBlock()
    x = torch.randn(2, 3, 4)
    seen: list[torch.Tensor] = []
    with last_token_hooks([block], "output", lambda i, last: seen.append(last.clone())) as (report,):
        out = block(x)
    assert torch.equal(out, x) and torch.equal(seen[0], x[:, -1])
    assert report == HookReport()  # a read is not an edit


def test_a_hook_that_never_runs_is_not_fired() -> None:
    with last_token_hooks([TensorBlock()], "output", lambda i, last: last + 1) as (report,):
        pass
    assert report.calls == 0 and not report.fired_and_changed


# ---------------------------------------------------------------- editing at the input


def test_input_edit_changes_what_the_module_sees_and_keeps_other_args() -> None:
    module = TwoInputs()
    x = torch.zeros(2, 3, 4)
    with last_token_hooks([module], "input", lambda i, last: last - 1.0) as (report,):
        out = module(x, 3.0)
    assert torch.equal(module.seen[:, -1], -torch.ones(2, 4)) and torch.equal(module.seen[:, :-1], torch.zeros(2, 2, 4))
    assert torch.equal(out[:, -1], torch.full((2, 4), -3.0))  # the edited input went through with scale 3
    assert torch.equal(x, torch.zeros(2, 3, 4))  # the caller's tensor is not modified in place
    assert report.calls == 1 and report.rows == 2 and report.fired_and_changed
    assert not module._forward_pre_hooks


def test_input_edit_on_a_linear_layer_equals_projecting_the_edited_input() -> None:
    torch.manual_seed(0)
    proj = torch.nn.Linear(4, 5)
    x = torch.randn(2, 3, 4)
    new = torch.randn(2, 4)
    with last_token_hooks([proj], "input", lambda i, last: new):
        out = proj(x)
    assert torch.allclose(out[:, -1], proj(new)) and torch.allclose(out[:, :-1], proj(x[:, :-1]))


# ---------------------------------------------------------------- cleanup


@pytest.mark.parametrize("site", ["output", "input"])
def test_hook_is_removed_even_when_the_forward_fails(site: str) -> None:
    block = torch.nn.Linear(4, 4)
    with pytest.raises(RuntimeError):
        with last_token_hooks([block], site, lambda i, last: last):  # type: ignore[arg-type]
            block(torch.zeros(2, 3, 5))  # wrong width: the forward raises
    assert not block._forward_hooks and not block._forward_pre_hooks


def test_hook_is_removed_when_the_edit_itself_fails() -> None:
    block = TensorBlock()

    def broken(i: int, last: torch.Tensor) -> torch.Tensor:
        raise ValueError("bad edit")

    with pytest.raises(ValueError, match="bad edit"):
        with last_token_hooks([block], "output", broken):
            block(torch.zeros(1, 2, 3))
    assert not block._forward_hooks


# ---------------------------------------------------------------- capture


@pytest.mark.parametrize("site", ["output", "input"])
def test_capture_collects_float32_chunks_per_module(site: str) -> None:
    modules = [TensorBlock().to(torch.bfloat16), TensorBlock().to(torch.bfloat16)]
    a = torch.randn(2, 3, 4).to(torch.bfloat16)
    b = torch.randn(1, 5, 4).to(torch.bfloat16)
    with capture_last_token(modules, site) as captured:  # type: ignore[arg-type]
        modules[0](a)
        modules[0](b)
        modules[1](b)
    assert [len(c) for c in captured] == [2, 1]
    assert all(chunk.dtype == torch.float32 for c in captured for chunk in c)
    assert torch.equal(captured[0][0], a[:, -1].float()) and torch.equal(captured[0][1], b[:, -1].float())
    assert torch.equal(captured[1][0], b[:, -1].float())
    assert not modules[0]._forward_hooks and not modules[0]._forward_pre_hooks


def test_capture_keeps_a_copy_not_a_view() -> None:
    class InPlace(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    module = InPlace()
    x = torch.zeros(1, 2, 3)
    with capture_last_token([module]) as captured:
        module(x)
    x += 5.0
    assert torch.equal(captured[0][0], torch.zeros(1, 3))


def test_capture_at_input_of_the_output_projection_of_the_tiny_model(tiny_handle) -> None:
    a = tiny_handle.adapter
    proj = a.attn_out(tiny_handle.model, 1)
    batch = encode(tiny_handle.tokenizer, [zero_shot_prompt("w1"), zero_shot_prompt("w2")])
    with torch.inference_mode():
        with capture_last_token([proj], "input") as inputs, capture_last_token([proj]) as outputs:
            tiny_handle.model(**batch)
    assert inputs[0][0].shape == (2, a.num_heads * a.head_dim)
    assert torch.allclose(proj(inputs[0][0]), outputs[0][0], atol=1e-6)


def test_replacing_block_output_changes_later_blocks_only(tiny_handle) -> None:
    blocks = tiny_handle.adapter.blocks(tiny_handle.model)
    batch = encode(tiny_handle.tokenizer, [zero_shot_prompt(f"w{i}") for i in range(3)])
    vector = torch.full((32,), 3.0)
    with torch.inference_mode():
        with capture_last_token(blocks) as clean:
            tiny_handle.model(**batch)
        with last_token_hooks([blocks[1]], "output", lambda i, last: vector.expand_as(last)) as (report,), \
                capture_last_token(blocks) as steered:
            tiny_handle.model(**batch)
    assert report.fired_and_changed and report.rows == 3
    assert torch.equal(clean[0][0], steered[0][0])  # below the edited block: untouched
    assert torch.allclose(steered[1][0], vector.expand(3, 32))  # the block's output is the vector
    assert not torch.allclose(clean[2][0], steered[2][0])  # above: changed


# ---------------------------------------------------------------- reports and per-row edits


def test_report_merge_adds_counts_and_keeps_the_largest_change() -> None:
    report = HookReport(calls=1, rows=4, max_abs_change=0.5)
    report.merge(HookReport(calls=2, rows=3, max_abs_change=0.25))
    assert report == HookReport(calls=3, rows=7, max_abs_change=0.5)
    report.merge(HookReport(calls=0, rows=0, max_abs_change=2.0))
    assert report == HookReport(calls=3, rows=7, max_abs_change=2.0)


def test_silent_layers_are_the_unfired_or_unchanged_ones() -> None:
    reports = {0: HookReport(1, 2, 0.1), 1: HookReport(1, 2, 0.0), 3: HookReport(0, 0, 0.0)}
    assert silent_layers([0, 1, 2, 3], reports) == [1, 2, 3]
    assert silent_layers([0], reports) == []


def _edit_blocks(n: int) -> list[TensorBlock]:
    return [TensorBlock() for _ in range(n)]


def _add_layer_plus_one(last: torch.Tensor, layer: int, rows: torch.Tensor, intervention: torch.Tensor) -> torch.Tensor:
    """Adds (layer + 1) to the rows whose intervention sits at `layer`, tagged with the intervention index."""
    out = last.clone()
    out[rows] += (layer + 1) + 10.0 * intervention[rows].unsqueeze(1)
    return out


def test_edits_at_edits_each_row_at_its_interventions_layer() -> None:
    blocks = _edit_blocks(3)
    layer_of = torch.tensor([2, 0, 2])  # intervention k edits block layer_of[k]
    reports: dict[int, HookReport] = {}
    intervene = edits_at(lambda l: blocks[l], "output", layer_of, _add_layer_plus_one, reports)
    intervention = torch.tensor([0, 1, 2, 1])
    x = torch.zeros(4, 2, 3)
    with intervene(intervention):
        out0, out1, out2 = (block(x) for block in blocks)
    assert torch.equal(out1, x)  # no intervention uses block 1: not hooked at all
    # block 0: only row 1 and row 3 (intervention 1) are edited
    assert out0[:, -1, 0].tolist() == [0.0, 11.0, 0.0, 11.0]
    # block 2: rows 0 (intervention 0) and 2 (intervention 2)
    assert out2[:, -1, 0].tolist() == [3.0, 0.0, 23.0, 0.0]
    assert torch.equal(out0[:, :-1], x[:, :-1]) and torch.equal(out2[:, :-1], x[:, :-1])
    assert set(reports) == {0, 2}
    assert reports[0] == HookReport(calls=1, rows=4, max_abs_change=11.0)
    assert reports[2] == HookReport(calls=1, rows=4, max_abs_change=23.0)
    assert not any(b._forward_hooks for b in blocks)


def test_edits_at_merges_reports_across_batches() -> None:
    blocks = _edit_blocks(3)
    layer_of = torch.tensor([0, 1, 1, 2])
    reports: dict[int, HookReport] = {}
    intervene = edits_at(lambda l: blocks[l], "output", layer_of, _add_layer_plus_one, reports)
    batches = [torch.tensor([0, 1, 2]), torch.tensor([3, 3]), torch.tensor([2, 0, 0, 1, 3])]
    for intervention in batches:
        x = torch.zeros(len(intervention), 2, 3)
        with intervene(intervention):
            for block in blocks:
                block(x)
    # layer 0: batches 1 and 3 (3 + 5 rows); layer 1: batches 1 and 3; layer 2: batches 2 and 3 (2 + 5 rows)
    assert reports[0] == HookReport(calls=2, rows=8, max_abs_change=1.0)
    assert reports[1] == HookReport(calls=2, rows=8, max_abs_change=22.0)  # intervention 2 at layer 1: 2 + 20
    assert reports[2] == HookReport(calls=2, rows=7, max_abs_change=33.0)  # intervention 3 at layer 2: 3 + 30
    assert silent_layers([0, 1, 2], reports) == []
    # a batch whose forward never reaches the hooks adds no call
    with intervene(torch.tensor([0])):
        pass
    assert reports[0].calls == 2


def test_edits_at_reports_a_silent_layer() -> None:
    blocks = _edit_blocks(2)
    reports: dict[int, HookReport] = {}
    keep = lambda last, layer, rows, intervention: last  # noqa: E731 - an edit that changes nothing
    with edits_at(lambda l: blocks[l], "output", torch.tensor([0, 1]), keep, reports)(torch.tensor([0, 1])):
        blocks[0](torch.ones(2, 2, 3))
        blocks[1](torch.ones(2, 2, 3))
    assert reports[0].calls == reports[1].calls == 1
    assert silent_layers([0, 1], reports) == [0, 1]


def test_edits_at_the_input_site() -> None:
    modules = [TwoInputs(), TwoInputs()]
    reports: dict[int, HookReport] = {}
    intervene = edits_at(lambda l: modules[l], "input", torch.tensor([1, 1]), _add_layer_plus_one, reports)
    with intervene(torch.tensor([0, 1])):
        modules[0](torch.zeros(2, 1, 2), 1.0)
        out = modules[1](torch.zeros(2, 1, 2), 2.0)
    assert torch.equal(modules[0].seen, torch.zeros(2, 1, 2))  # block 0 is no intervention's layer
    assert modules[1].seen[:, -1, 0].tolist() == [2.0, 12.0]
    assert out[:, -1, 0].tolist() == [4.0, 24.0]
    assert set(reports) == {1} and reports[1].rows == 2

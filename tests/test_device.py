"""Devices and dtypes on the CPU: resolution and its errors, worker-to-GPU mapping, the dtype in every key,
float32 accumulation on a bfloat16 model, and out-of-memory back-off with a simulated error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_steer.run.device import (
    DeviceError, OutOfMemory, Placement, physical_gpus, resolve_device, resolve_dtype, with_backoff, worker_gpus,
    worker_index,
)
from pytest_steer.record import Provenance, TaskData
from pytest_steer.judge.verdict import provenance_mismatch


# ---------------------------------------------------------------- resolution


@pytest.mark.parametrize("requested, gpus, mps, expected", [
    ("auto", 0, False, "cpu"), ("auto", 2, False, "cuda:0"), ("auto", 0, True, "mps"), ("", 0, False, "cpu"),
    ("cpu", 4, True, "cpu"), ("cuda", 1, False, "cuda:0"), ("cuda:1", 2, False, "cuda:1"), ("mps", 0, True, "mps"),
    ("CUDA:0", 1, False, "cuda:0"),
])
def test_device_resolution(requested: str, gpus: int, mps: bool, expected: str) -> None:
    assert resolve_device(requested, gpus, mps) == expected


@pytest.mark.parametrize("requested, gpus, mps, fragment", [
    ("cuda", 0, False, "'cuda' asked for, but no CUDA device is visible"),
    ("cuda:2", 2, False, "'cuda:2' asked for, but 2 CUDA device(s) are visible (cuda:0..cuda:1)"),
    ("mps", 0, False, "'mps' asked for, but this torch has no MPS backend"),
    ("gpu", 1, False, "expected one of auto, cpu, cuda, cuda:N, mps, got 'gpu'"),
])
def test_device_errors_say_what_is_available(requested: str, gpus: int, mps: bool, fragment: str) -> None:
    with pytest.raises(DeviceError, match="--steer-device") as info:
        resolve_device(requested, gpus, mps)
    assert fragment in str(info.value)


def test_dtype_resolution_and_errors() -> None:
    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype(None, "cpu") == "float32"
    assert resolve_dtype("auto", "cuda:0") == "bfloat16" and resolve_dtype("float16", "cuda:1") == "float16"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(DeviceError, match="--steer-dtype: expected one of auto, float32, bfloat16, float16, got 'int8'"):
        resolve_dtype("int8", "cpu")


def test_placement_describes_itself() -> None:
    assert Placement("cpu", "float32").describe() == "cpu/float32"
    assert Placement("cuda:1", "bfloat16", None, (1,), ("3",)).describe() == "cuda:1/bfloat16 (GPU 3)"
    assert Placement("cuda:0", "bfloat16", "auto", (0, 1), ("0", "1")).describe() == \
        "cuda:0/bfloat16 (GPU 0, 1; device_map auto)"


# ---------------------------------------------------------------- workers and GPUs


def test_worker_k_takes_gpu_k_mod_g() -> None:
    assert [worker_gpus(k, 4) for k in range(6)] == [[0], [1], [2], [3], [0], [1]]
    assert worker_gpus(0, 0) == []  # no GPU: nothing to take


def test_groups_of_gpus_for_sharded_models() -> None:
    assert [worker_gpus(k, 4, per_worker=2) for k in range(3)] == [[0, 1], [2, 3], [0, 1]]
    assert worker_gpus(1, 3, per_worker=2) == [0, 1]  # 3 GPUs hold one group of 2; the third stays free
    with pytest.raises(DeviceError, match="expected 1..2"):
        worker_gpus(0, 2, per_worker=3)


def test_physical_names_follow_an_outer_cuda_visible_devices() -> None:
    assert physical_gpus([0, 1], "4,6") == ["4", "6"]
    assert physical_gpus([1], None) == ["1"]
    assert physical_gpus([0], "GPU-aa11") == ["GPU-aa11"]
    assert worker_index("gw3") == 3 and worker_index("master") is None and worker_index("") is None


# ---------------------------------------------------------------- out-of-memory back-off


class FakeOutOfMemory(RuntimeError):
    pass


FakeOutOfMemory.__name__ = "OutOfMemoryError"  # what torch.cuda raises


def test_out_of_memory_halves_the_batch_until_it_fits() -> None:
    tried: list[int] = []
    released: list[int] = []

    def run(size: int) -> str:
        tried.append(size)
        if size > 5:
            raise FakeOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"ran with {size}"

    assert with_backoff(run, 32, "case x", release=lambda: released.append(1)) == ("ran with 4", 4)
    assert tried == [32, 16, 8, 4] and len(released) == 3


def test_out_of_memory_at_one_row_names_the_case_and_the_memory() -> None:
    def run(size: int) -> None:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(OutOfMemory, match=r"case x on cuda:0/bfloat16: out of memory even one row at a time \(peak 71.5 GiB"):
        with_backoff(run, 4, "case x on cuda:0/bfloat16", peak=lambda: 71.5)


def test_other_errors_are_not_retried() -> None:
    tried: list[int] = []

    def run(size: int) -> None:
        tried.append(size)
        raise ValueError("a bad setting")

    with pytest.raises(ValueError, match="a bad setting"):
        with_backoff(run, 16, "case x")
    assert tried == [16]


def test_a_session_retries_a_case_with_a_smaller_batch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       tiny_model_dir: Path, tiny_task_file: Path) -> None:
    """A simulated CUDA out-of-memory error in the method: the case reruns with half the batch and says so."""
    from pytest_steer.cases.casefile import load_case_file
    from pytest_steer.methods.task_vector import TaskVectorMethod
    from pytest_steer.run.options import SteerOptions
    from pytest_steer.run.session import SteerSession

    real_run = TaskVectorMethod.run
    sizes: list[int] = []

    def tight(self, handle, task, splits, settings, context):  # type: ignore[no-untyped-def]
        sizes.append(settings.batch_size)
        if settings.batch_size > 2:
            raise FakeOutOfMemory("CUDA out of memory")
        return real_run(self, handle, task, splits, settings, context)

    monkeypatch.setattr(TaskVectorMethod, "run", tight)
    case_file = tmp_path / "steer_t.toml"
    case_file.write_text(f"""
[defaults]
n_dev = 6
n_test = 6
[methods.task_vector]
n_prompts = 4
n_shots = 3
batch_size = 8
[models.tiny]
path = "{tiny_model_dir}"
[tasks.pairs]
path = "{tiny_task_file}"
[[suite]]
models = ["tiny"]
methods = ["task_vector"]
tasks = ["pairs"]
""")
    (case,) = load_case_file(case_file)
    options = SteerOptions(tmp_path / "cache", tmp_path / "baselines", False, 0.1, 0.05, None, None)
    result = SteerSession(options).run_case(case)
    assert sizes == [8, 4, 2]
    assert result.diagnostics["batch_size_after_out_of_memory"] == 2
    assert result.provenance.settings["batch_size"] == 8  # the case's settings, as the key and baseline know them


# ---------------------------------------------------------------- dtype in every key, float32 accumulation


def test_the_dtype_is_part_of_the_fingerprint_and_of_the_result_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pytest_steer.models.loader import resolve
    from pytest_steer.models.spec import ModelSpec
    from tests.test_results import INPUTS

    spec = ModelSpec("tiny", "folder", str(tiny_model_dir))
    f32 = resolve(spec, tmp_path, dtype="float32").fingerprint
    bf16 = resolve(spec, tmp_path, dtype="bfloat16").fingerprint
    assert f32 != bf16  # vectors are cached under the fingerprint: a float32 vector never serves a bfloat16 run
    on_gpu = resolve(spec, tmp_path, dtype="float32", device="cuda:1").fingerprint
    assert on_gpu not in (f32, bf16) and on_gpu == resolve(spec, tmp_path, dtype="float32", device="cuda:0").fingerprint
    assert replace(INPUTS, dtype="bfloat16").key() != INPUTS.key() and replace(INPUTS, device="cuda").key() != INPUTS.key()


def test_a_bfloat16_model_scores_in_float32_close_to_the_float32_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    from pytest_steer.methods.hooks import capture_last_token
    from pytest_steer.methods.scoring import encode, score_interventions
    from pytest_steer.models.loader import load_model
    from pytest_steer.models.spec import ModelSpec

    spec = ModelSpec("tiny", "folder", str(tiny_model_dir))
    prompts = [f"Q: w{i}\nA:" for i in range(12)]
    targets = [10 + i for i in range(12)]
    scores, captured = {}, {}
    for dtype in ("float32", "bfloat16"):
        handle = load_model(spec, tmp_path, placement=Placement("cpu", dtype))
        assert next(handle.model.parameters()).dtype == getattr(torch, dtype)
        scores[dtype] = score_interventions(handle, prompts, targets, batch_size=5)
        with capture_last_token(handle.adapter.blocks(handle.model)) as chunks, torch.inference_mode():
            handle.model(**encode(handle.tokenizer, prompts), logits_to_keep=1, use_cache=False)
        captured[dtype] = torch.cat(chunks[1])
    low, full = scores["bfloat16"].target_logprob, scores["float32"].target_logprob
    assert low.dtype == torch.float32 and captured["bfloat16"].dtype == torch.float32  # accumulated in float32
    # bfloat16 keeps 8 bits of mantissa: log-probabilities within 0.05 nats, activations within 2%
    assert float((low - full).abs().max()) < 0.05
    rel = (captured["bfloat16"] - captured["float32"]).norm() / captured["float32"].norm()
    assert float(rel) < 0.02


def test_a_baseline_of_another_device_or_dtype_is_named_not_compared() -> None:
    def prov(device: str, dtype: str, fingerprint: str) -> Provenance:
        return Provenance(fingerprint, {}, {}, {}, TaskData("t", "0" * 64, 4), 0, {"test": 4}, {}, device, dtype)

    reasons = provenance_mismatch(prov("cuda", "bfloat16", "b" * 32), prov("cpu", "float32", "a" * 32))
    assert len(reasons) == 1 and reasons[0].startswith(
        "device or dtype changed: the baseline was computed on cpu/float32, this run on cuda/bfloat16")
    assert provenance_mismatch(prov("cpu", "float32", "a" * 32), prov("cpu", "float32", "a" * 32)) == []


# ---------------------------------------------------------------- options and case files


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_a_usage_error(suite) -> None:
    write, run = suite
    write()
    result = run("--steer-device=cuda", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--steer-device: 'cuda' asked for, but no CUDA device is visible*"])


def test_a_run_in_bfloat16_records_it_and_is_not_judged_against_a_float32_baseline(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    write()
    run("--steer-update").assert_outcomes(passed=2)
    stored = json.loads((pytester.path / "baselines" / "tinya" / "task_vector" / "tinytask.json").read_text())
    assert (stored["device"], stored["dtype"]) == ("cpu", "float32")
    result = run("--steer-dtype=bfloat16", "--steer-report=r.json")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*device or dtype changed: the baseline was computed on cpu/float32, this run on cpu/bfloat16*"])
    cases = json.loads((pytester.path / "r.json").read_text())["cases"]
    assert {c["result"]["dtype"] for c in cases} == {"bfloat16"} and {c["device"] for c in cases} == {"cpu/bfloat16"}
    assert not any(c["result"]["reused"] for c in cases)  # float32 results are never served to a bfloat16 run


@pytest.mark.parametrize("entry, fragment", [
    ('dtype = "int4"', "[models.tinya].dtype: expected one of auto, float32, bfloat16, float16, got 'int4'"),
    ('device = "gpu0"', "[models.tinya].device: expected one of auto, cpu, cuda, cuda:N, mps, got 'gpu0'"),
    ('device_map = "balanced"', "[models.tinya].device_map: expected one of auto, got 'balanced'"),
])
def test_a_models_own_placement_is_checked_when_the_file_is_read(suite, pytester: pytest.Pytester, entry: str,
                                                                 fragment: str) -> None:
    write, run = suite
    path = write()
    path.write_text(path.read_text().replace("[models.tinya]\n", f"[models.tinya]\n{entry}\n"))
    result = run("--collect-only")
    assert fragment in result.stdout.str()


def test_a_models_own_dtype_wins(suite, pytester: pytest.Pytester) -> None:
    write, run = suite
    path = write()
    path.write_text(path.read_text().replace("[models.tinya]\n", '[models.tinya]\ndtype = "bfloat16"\n'))
    result = run("--steer-update", "--steer-report=r.json")
    result.assert_outcomes(passed=2)
    cases = json.loads((pytester.path / "r.json").read_text())["cases"]
    assert {c["result"]["dtype"] for c in cases} == {"bfloat16"}
    assert np.all([c["result"]["model_source"]["dtype"] == "bfloat16" for c in cases])


def test_device_map_auto_loads_through_accelerate_and_scores_the_same(tiny_model_dir: Path, tmp_path: Path) -> None:
    """On a machine without a GPU accelerate places every block on the CPU: the same numbers as a plain load
    (with a GPU it places them there, and float32 on the GPU stays within rounding of the CPU)."""
    from pytest_steer.methods.scoring import score_interventions
    from pytest_steer.models.loader import load_model
    from pytest_steer.models.spec import ModelSpec

    spec = ModelSpec("tiny", "folder", str(tiny_model_dir))
    prompts, targets = [f"Q: w{i}\nA:" for i in range(6)], [10 + i for i in range(6)]
    plain = load_model(spec, tmp_path, placement=Placement("cpu", "float32"))
    mapped = load_model(spec, tmp_path, placement=Placement("cpu", "float32", "auto"))
    on_cpu, on_map = score_interventions(plain, prompts, targets), score_interventions(mapped, prompts, targets)
    if torch.cuda.is_available():
        assert mapped.device.type == "cuda"
        assert torch.allclose(on_cpu.target_logprob, on_map.target_logprob, atol=1e-3)
    else:
        assert mapped.device.type == "cpu"
        assert torch.equal(on_cpu.target_logprob, on_map.target_logprob)

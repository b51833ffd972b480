"""The model fingerprint: every weight byte, the forward-pass config, the tokenizer and the dtype;
nothing incidental (names, paths, file layout); remembered per file by (path, size, mtime)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pytest_steer.models import fingerprint as fp
from pytest_steer.models.fingerprint import FingerprintError, model_fingerprint


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def test_a_one_element_change_in_any_weight_changes_the_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = model_fingerprint(tiny_model_dir)
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    seen = {before}
    for name in sorted(weights):
        copy = _copy(tiny_model_dir, tmp_path / name.replace(".", "_"))
        changed = {k: v.clone() for k, v in weights.items()}
        flat = changed[name].view(-1)
        flat[flat.numel() // 2 + 1 if flat.numel() > 2 else 0] += 1e-3  # an interior element, not a sampled end
        save_file(changed, str(copy / "model.safetensors"), metadata={"format": "pt"})
        after = model_fingerprint(copy)
        assert after not in seen, f"changing one element of {name} did not change the fingerprint"
        seen.add(after)
    assert len(seen) == len(weights) + 1


def test_resaved_and_sharded_copies_share_the_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="20KB")
    tokenizer.save_pretrained(sharded)
    assert len(list(sharded.glob("*.safetensors"))) > 1
    resaved = tmp_path / "resaved"
    model.save_pretrained(resaved)
    tokenizer.save_pretrained(resaved)
    assert model_fingerprint(sharded) == model_fingerprint(resaved) == model_fingerprint(tiny_model_dir)


def _edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_incidental_config_fields_do_not_count_but_forward_pass_fields_do(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = model_fingerprint(tiny_model_dir)
    renamed = _copy(tiny_model_dir, tmp_path / "renamed")
    _edit_config(renamed, architectures=None, _name_or_path="/elsewhere", transformers_version="0.0.1")
    assert model_fingerprint(renamed) == before
    rope = _copy(tiny_model_dir, tmp_path / "rope")
    config = json.loads((rope / "config.json").read_text())
    params = dict(config.get("rope_parameters") or {"rope_type": "default"})
    params["rope_theta"] = 1234.0
    _edit_config(rope, rope_parameters=params, rope_theta=1234.0)
    assert model_fingerprint(rope) != before


def test_tokenizer_vocabulary_and_dtype_count(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = model_fingerprint(tiny_model_dir)
    assert model_fingerprint(tiny_model_dir, dtype="bfloat16") != before
    vocab = _copy(tiny_model_dir, tmp_path / "vocab")
    data = json.loads((vocab / "tokenizer.json").read_text())
    data["model"]["vocab"]["w0"], data["model"]["vocab"]["w1"] = data["model"]["vocab"]["w1"], data["model"]["vocab"]["w0"]
    (vocab / "tokenizer.json").write_text(json.dumps(data))
    assert model_fingerprint(vocab) != before


def test_a_tied_output_matrix_counts_once_under_either_name(tiny_model_dir: Path, tmp_path: Path) -> None:
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    embedding = weights["model.embed_tokens.weight"]
    folders = []
    for keep in ("model.embed_tokens.weight", "lm_head.weight", "both"):
        copy = _copy(tiny_model_dir, tmp_path / keep.replace(".", "_"))
        _edit_config(copy, tie_word_embeddings=True)
        tensors = {k: v for k, v in weights.items() if k not in ("lm_head.weight", "model.embed_tokens.weight")}
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            if keep in (name, "both"):
                tensors[name] = embedding.clone()
        save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
        folders.append(copy)
    assert len({model_fingerprint(f) for f in folders}) == 1


def test_weights_are_hashed_once_and_again_only_when_the_file_changes(tiny_model_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    memo = tmp_path / "memo"
    memo.mkdir()
    first = model_fingerprint(copy, memo_dir=memo)
    calls: list[Path] = []
    real = fp._hash_tensors
    monkeypatch.setattr(fp, "_hash_tensors", lambda path: calls.append(path) or real(path))
    assert model_fingerprint(copy, memo_dir=memo) == first and calls == []
    (memo / next(p.name for p in memo.iterdir() if p.name.startswith("folder-"))).unlink()
    assert model_fingerprint(copy, memo_dir=memo) == first and calls == []  # the per-file memo still holds
    weights = copy / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert model_fingerprint(copy, memo_dir=memo) == first and len(calls) == 1  # same bytes, re-hashed


def test_a_damaged_weight_file_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    (copy / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(FingerprintError, match="model.safetensors"):
        model_fingerprint(copy)

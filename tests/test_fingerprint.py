"""The model fingerprint: every weight byte, the forward-pass config, the tokenizer and the dtype;
nothing incidental (names, paths, file layout); weights hashed from their content on every call, exactly
the files the loader would load."""

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


def _same_size_other_weights(folder: Path) -> None:
    """Replace the weights by another checkpoint of the same size and restore the mtime, as `cp -p` would."""
    weights = folder / "model.safetensors"
    stat = weights.stat()
    tensors = {k: v + 1.0 if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    assert weights.stat().st_size == stat.st_size
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_weights_replaced_with_their_mtime_restored_change_the_fingerprint(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    memo = tmp_path / "memo"
    first = model_fingerprint(copy, memo_dir=memo)
    _same_size_other_weights(copy)
    assert model_fingerprint(copy, memo_dir=memo) != first


def test_weights_are_hashed_on_every_call(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memo = tmp_path / "memo"
    first = model_fingerprint(tiny_model_dir, memo_dir=memo)
    calls: list[Path] = []
    real = fp.tensor_digests
    monkeypatch.setattr(fp, "tensor_digests", lambda path: calls.append(path) or real(path))
    assert model_fingerprint(tiny_model_dir, memo_dir=memo) == first and len(calls) == 1


def test_the_config_is_remembered_by_its_content_only(tiny_model_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    memo = tmp_path / "memo"
    first = model_fingerprint(tiny_model_dir, memo_dir=memo)
    import transformers

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the config was parsed again")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)
    assert model_fingerprint(tiny_model_dir, memo_dir=memo) == first  # remembered: no parse
    for stored in memo.iterdir():  # a memo whose key does not match its file is not believed
        data = json.loads(stored.read_text())
        data["config_sha256"] = "0" * 64
        stored.write_text(json.dumps(data))
    with pytest.raises(AssertionError, match="parsed again"):
        model_fingerprint(tiny_model_dir, memo_dir=memo)


def test_a_shared_memo_cannot_make_other_weights_pass(tiny_model_dir: Path, tmp_path: Path) -> None:
    memo = tmp_path / "memo"
    first = model_fingerprint(tiny_model_dir, memo_dir=memo)
    other = _copy(tiny_model_dir, tmp_path / "other")
    _same_size_other_weights(other)
    for stored in memo.iterdir():  # whatever the memo says about the (identical) config
        data = json.loads(stored.read_text())
        data["fingerprint"] = first
        stored.write_text(json.dumps(data))
    assert model_fingerprint(other, memo_dir=memo) != first


def test_only_the_files_the_loader_loads_are_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = model_fingerprint(tiny_model_dir)
    backup = _copy(tiny_model_dir, tmp_path / "backup")
    tensors = {k: v + 1.0 for k, v in load_file(str(backup / "model.safetensors")).items()}
    save_file(tensors, str(backup / "model.old.safetensors"), metadata={"format": "pt"})
    save_file(tensors, str(backup / "zz-backup.safetensors"), metadata={"format": "pt"})
    assert model_fingerprint(backup) == before
    only_backup = _copy(tiny_model_dir, tmp_path / "only-backup")
    (only_backup / "model.safetensors").rename(only_backup / "weights-backup.safetensors")
    with pytest.raises(FingerprintError, match="model.safetensors"):
        model_fingerprint(only_backup)


def _sharded(tiny_model_dir: Path, folder: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(folder, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_a_shard_index_naming_a_missing_or_outside_shard_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    missing = _sharded(tiny_model_dir, tmp_path / "missing")
    shard = sorted(missing.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(FingerprintError, match=f"index.json.*{shard.name}"):
        model_fingerprint(missing)
    outside = _sharded(tiny_model_dir, tmp_path / "outside")
    index = outside / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = "../missing/" + data["weight_map"][name]
    index.write_text(json.dumps(data))
    with pytest.raises(FingerprintError, match="weight_map"):
        model_fingerprint(outside)


def test_a_shard_holding_tensors_its_index_does_not_name_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = _sharded(tiny_model_dir, tmp_path / "extra")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    tensors = load_file(str(shard))
    tensors["stray.weight"] = torch.zeros(2)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(FingerprintError, match="stray.weight"):
        model_fingerprint(folder)


def _rewrite_header(path: Path, edit: object) -> None:
    raw = path.read_bytes()
    (size,) = __import__("struct").unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    edit(header)  # type: ignore[operator]
    text = json.dumps(header).encode()
    path.write_bytes(__import__("struct").pack("<Q", len(text)) + text + raw[8 + size:])


def _first_tensor(header: dict) -> dict:
    return header[sorted(k for k in header if k != "__metadata__")[0]]


@pytest.mark.parametrize("edit, message", [
    (lambda h: _first_tensor(h).__setitem__("data_offsets", [0, 10 ** 12]), "past"),
    (lambda h: _first_tensor(h).__setitem__("shape", [10 ** 6]), "bytes for shape"),
    (lambda h: _first_tensor(h).__setitem__("dtype", "F99"), "dtype"),
    (lambda h: _first_tensor(h).__setitem__("shape", [-1]), "non-negative"),
    (lambda h: _first_tensor(h).__setitem__("data_offsets", "0-8"), "two integers"),
    (lambda h: h.__setitem__("ghost", {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}), "overlap or gap"),
], ids=["offsets-past-end", "shape-larger-than-bytes", "unknown-dtype", "negative-dim", "offsets-not-list",
        "overlapping-tensor"])
def test_a_header_the_loader_would_refuse_is_named(tiny_model_dir: Path, tmp_path: Path, edit: object,
                                                    message: str) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    _rewrite_header(copy / "model.safetensors", edit)
    with pytest.raises(FingerprintError, match=message):
        model_fingerprint(copy)


def test_a_header_length_past_the_end_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    weights = copy / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes((10 ** 9).to_bytes(8, "little") + raw[8:])
    with pytest.raises(FingerprintError, match="past the end"):
        model_fingerprint(copy)
    weights.write_bytes(raw[: len(raw) // 2])  # truncated data section
    with pytest.raises(FingerprintError, match="model.safetensors"):
        model_fingerprint(copy)


def test_a_config_with_repository_code_is_refused_without_a_prompt(tiny_model_dir: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    _edit_config(copy, model_type="steer-probe-custom", auto_map={"AutoConfig": "custom.ProbeConfig"})
    (copy / "custom.py").write_text("raise SystemExit('repository code ran')\n")
    monkeypatch.setattr("builtins.input", lambda *a: (_ for _ in ()).throw(AssertionError("prompted")))
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("y\n"))
    with pytest.raises(FingerprintError, match="config.json"):
        model_fingerprint(copy)


def test_a_damaged_weight_file_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    (copy / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(FingerprintError, match="model.safetensors"):
        model_fingerprint(copy)


@pytest.mark.parametrize("name", ["special_tokens_map.json", "added_tokens.json"])
def test_the_other_token_files_the_tokenizer_reads_count(tiny_model_dir: Path, tmp_path: Path, name: str) -> None:
    before = model_fingerprint(tiny_model_dir)
    copy = _copy(tiny_model_dir, tmp_path / "copy")
    (copy / name).write_text(json.dumps({"pad_token": "w0"} if name.startswith("special") else {"<new>": 999}))
    assert model_fingerprint(copy) != before

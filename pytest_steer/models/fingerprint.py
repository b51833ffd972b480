"""The model fingerprint: a hash of what determines the computation, read from the model's files.

It covers every weight byte (tensor by tensor, so file layout and sharding do not matter), the
config fields that change the forward pass, the tokenizer's vocabulary, merges and special tokens,
and the dtype the weights are loaded in. Incidental fields (`architectures`, `_name_or_path`,
`transformers_version`, ...) are left out. Each weight file is hashed once and remembered by
(path, size, mtime), so a re-run reads no weights. No torch: the fingerprint is known before (and
without) loading the model, which is what lets an unchanged case reuse its stored result.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path
from typing import Any

from pytest_steer.files import atomic_write_json, file_sha256

VERSION = "fp2"  # changes when what the fingerprint covers changes

# config fields that never change the forward pass of a causal LM in evaluation
INCIDENTAL_CONFIG = frozenset({
    "architectures", "_name_or_path", "_model_name_or_path", "transformers_version", "_commit_hash",
    "quantization_config", "dtype", "torch_dtype", "use_cache", "output_hidden_states", "output_attentions",
    "return_dict", "id2label", "label2id", "problem_type", "initializer_range", "chunk_size_feed_forward",
    "auto_map", "_attn_implementation_autoset",
})
# tokenizer.json parts that decide how text becomes ids (not its padding/truncation settings)
TOKENIZER_PARTS = ("model", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder")
SLOW_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "spiece.model")


class FingerprintError(Exception):
    """The model's files could not be read for a fingerprint; the message names the file."""


def tensor_digests(path: Path, memo_dir: Path | None) -> dict[str, list[Any]]:
    """{tensor name: [dtype, shape, sha256 of its bytes]} for one safetensors file, remembered by
    (path, size, mtime) in `memo_dir` so an unchanged file is hashed once."""
    path = path.resolve()
    stat = path.stat()
    seen = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    memo = None if memo_dir is None else memo_dir / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
    if memo is not None:
        try:
            stored = json.loads(memo.read_text())
            if {k: stored.get(k) for k in seen} == seen and isinstance(stored.get("tensors"), dict):
                return stored["tensors"]
        except (OSError, ValueError):
            pass
    tensors = _hash_tensors(path)
    if memo is not None:
        try:
            atomic_write_json(memo, {**seen, "tensors": tensors})
        except OSError:  # a read-only cache: correct, just not remembered
            pass
    return tensors


def _hash_tensors(path: Path) -> dict[str, list[Any]]:
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
            start = 8 + size
            out: dict[str, list[Any]] = {}
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for name, info in sorted(header.items()):
                    if name == "__metadata__":
                        continue
                    begin, end = info["data_offsets"]
                    digest = hashlib.sha256(memoryview(data)[start + begin: start + end]).hexdigest()
                    out[name] = [info["dtype"], list(info["shape"]), digest]
            return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise FingerprintError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc


def config_fields(folder: Path) -> dict[str, Any]:
    """The config as transformers reads it (defaults filled in, so a file that omits a default and
    one that states it agree), without the incidental fields."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder)).to_dict()
    except (OSError, ValueError, KeyError) as exc:
        raise FingerprintError(f"{folder / 'config.json'}: cannot be read as a model config ({exc})") from exc
    return {k: v for k, v in config.items() if k not in INCIDENTAL_CONFIG}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FingerprintError(f"{path}: not valid JSON ({exc})") from exc


def tokenizer_digest(folder: Path) -> str:
    """Hash of the vocabulary, merges, normalisation and special tokens."""
    digest = hashlib.sha256()
    fast = folder / "tokenizer.json"
    if fast.is_file():
        data = _read_json(fast)
        digest.update(json.dumps({k: data.get(k) for k in TOKENIZER_PARTS}, sort_keys=True).encode())
    else:  # a slow tokenizer: its vocabulary files as they are
        for name in SLOW_TOKENIZER_FILES:
            if (folder / name).is_file():
                digest.update(name.encode() + hashlib.sha256((folder / name).read_bytes()).digest())
    settings = folder / "tokenizer_config.json"
    if settings.is_file():
        special = {k: v for k, v in _read_json(settings).items() if k.endswith("_token") or k.startswith("add_")}
        digest.update(json.dumps(special, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight files, else the pickled ones (`*.bin`, `*.pt`)."""
    for patterns in (("*.safetensors",), ("*.bin", "*.pt")):
        files = sorted(p for pattern in patterns for p in folder.glob(pattern) if not p.name.startswith("."))
        if files:
            return files
    raise FingerprintError(f"{folder}: no weight files to fingerprint (expected *.safetensors)")





def model_fingerprint(folder: Path, dtype: str = "float32", memo_dir: Path | None = None) -> str:
    """The fingerprint of the model in `folder` when loaded in `dtype` (32 hex characters).

    Remembered by the (path, size, mtime) of every file it reads, so an unchanged folder costs a
    few `stat` calls and no transformers import."""
    folder = Path(folder).resolve()
    inputs = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    stats = [(p.name, p.stat()) for p in inputs]
    seen = {"dtype": dtype, "version": VERSION, "files": [[name, s.st_size, s.st_mtime_ns] for name, s in stats]}
    memo = None if memo_dir is None else memo_dir / ("folder-" + hashlib.sha256(str(folder).encode()).hexdigest()[:32] + ".json")
    if memo is not None:
        try:
            stored = json.loads(memo.read_text())
            if stored.get("seen") == seen and isinstance(stored.get("fingerprint"), str):
                return stored["fingerprint"]
        except (OSError, ValueError, AttributeError):
            pass
    fingerprint = _compute(folder, dtype, memo_dir)
    if memo is not None:
        try:
            atomic_write_json(memo, {"seen": seen, "fingerprint": fingerprint})
        except OSError:
            pass
    return fingerprint


def _compute(folder: Path, dtype: str, memo_dir: Path | None) -> str:
    config = config_fields(folder)
    tensors: dict[str, list[Any]] = {}
    for path in weight_files(folder):
        if path.suffix == ".safetensors":
            tensors.update(tensor_digests(path, memo_dir))
        else:  # pickled weights (opted in per model): hashed file by file, so their layout counts
            tensors[f"file:{path.name}"] = ["file", [], file_sha256(path)]
    if config.get("tie_word_embeddings"):
        _collapse_tied(tensors, config)
    digest = hashlib.sha256(VERSION.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(tensors.items())).encode())
    digest.update(tokenizer_digest(folder).encode())
    digest.update(dtype.encode())
    return digest.hexdigest()[:32]


def _collapse_tied(tensors: dict[str, list[Any]], config: dict[str, Any]) -> None:
    """Tied output and input embeddings are one matrix at load time; a file may store it under
    either name (or both), so it enters the hash once, under one name."""
    shape = tensors["lm_head.weight"][1] if "lm_head.weight" in tensors else [config.get("vocab_size"),
                                                                              config.get("hidden_size")]
    names = [name for name, (_, tensor_shape, _) in tensors.items() if tensor_shape == shape]
    if names:
        tensors["tied:embedding"] = sorted({json.dumps(tensors.pop(name)) for name in names})


def hub_folder(repo_id: str, revision: str | None) -> Path:
    """The local snapshot folder of a hub model (offline: it must already be in the cache)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - the hub library raises many kinds; all mean "not here"
        raise FingerprintError(f"hub model {repo_id} is not in the local Hugging Face cache ({exc})") from exc


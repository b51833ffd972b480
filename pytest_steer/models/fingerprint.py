"""The model fingerprint: a hash of what determines the computation, read from the model's files.

It covers every weight byte (tensor by tensor, so file layout and sharding do not matter) of exactly the
files the loader would load, the config fields that change the forward pass, the tokenizer's vocabulary,
merges and special tokens, and the dtype the weights are loaded in. Incidental fields (`architectures`,
`_name_or_path`, `transformers_version`, ...) are left out. Weights are hashed from their content every
time a process resolves a model: no memo keyed by path, size or mtime (which `cp -p`, tar and
`rsync -t` preserve) can vouch for them. The only thing remembered is the parsed config, keyed by the
sha256 of the config file's own bytes. No torch.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from pathlib import Path
from typing import Any

from pytest_steer.errors import SteerError
from pytest_steer.storage.files import atomic_write_json, file_sha256

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
# files the tokenizer loader also reads (special and added tokens), hashed as they are where present
TOKEN_FILES = ("special_tokens_map.json", "added_tokens.json")
# the weight files transformers looks for in a local folder, in its order: single file, then shard index
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# bytes per element of each safetensors dtype
ITEM_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


class FingerprintError(SteerError):
    """The model's files could not be read for a fingerprint; the message names the file."""


def tensor_digests(path: Path) -> dict[str, list[Any]]:
    """{tensor name: [dtype, shape, sha256 of its bytes]} for one safetensors file, hashed from its content.

    The header is checked the way the loader checks it (known dtypes, sizes that match the shapes, data
    offsets that tile the data section exactly), so a file the loader would refuse never fingerprints."""
    try:
        with open(path, "rb") as handle:
            file_size = handle.seek(0, 2)
            handle.seek(0)
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > file_size - 8:
                raise ValueError(f"header length {size} runs past the end of the {file_size}-byte file")
            header = json.loads(handle.read(size))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            start = 8 + size
            spans = _check_header(header, file_size - start)
            out: dict[str, list[Any]] = {}
            if not spans:
                return out
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                for name, (begin, end) in sorted(spans.items()):
                    digest = hashlib.sha256(memoryview(data)[start + begin: start + end]).hexdigest()
                    out[name] = [header[name]["dtype"], list(header[name]["shape"]), digest]
            return out
    except (OSError, ValueError, KeyError, TypeError, struct.error, RecursionError) as exc:
        raise FingerprintError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc


def _check_header(header: dict[str, Any], data_size: int) -> dict[str, tuple[int, int]]:
    spans: dict[str, tuple[int, int]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in ITEM_SIZES:
            raise ValueError(f"tensor {name!r}: no known dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise ValueError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
            raise ValueError(f"tensor {name!r}: data_offsets {offsets!r} is not two integers")
        count = 1
        for n in shape:
            count *= n
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise ValueError(f"tensor {name!r}: data_offsets {offsets} run past the {data_size}-byte data section")
        if end - begin != count * ITEM_SIZES[info["dtype"]]:
            raise ValueError(f"tensor {name!r}: {end - begin} bytes for shape {shape} of {info['dtype']}")
        spans[name] = (begin, end)
    position = 0
    for name, (begin, end) in sorted(spans.items(), key=lambda item: item[1]):
        if begin != position:
            raise ValueError(f"tensor {name!r} starts at byte {begin}, expected {position} (overlap or gap)")
        position = end
    if position != data_size:
        raise ValueError(f"the tensors cover {position} of the {data_size}-byte data section")
    return spans


def config_fields(folder: Path, memo_dir: Path | None = None) -> dict[str, Any]:
    """The config as transformers reads it (defaults filled in, so a file that omits a default and
    one that states it agree), without the incidental fields.

    Remembered in `memo_dir` under the sha256 of the config file's bytes and the transformers version
    (what the parse is a function of), so an unchanged config costs no transformers import."""
    path = folder / "config.json"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FingerprintError(f"{path}: cannot be read as a model config ({exc})") from exc
    key = hashlib.sha256(raw).hexdigest()
    memo = None if memo_dir is None else memo_dir / f"config-{key[:32]}.json"
    if memo is not None:
        try:
            stored = json.loads(memo.read_text())
            if stored.get("config_sha256") == key and stored.get("transformers") == _transformers_version():
                return dict(stored["fields"])
        except (OSError, ValueError, AttributeError, KeyError, TypeError, RecursionError):
            pass
    from transformers import AutoConfig

    try:  # never run or prompt for a repository's own code: a config that needs it is refused
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False).to_dict()
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise FingerprintError(f"{path}: cannot be read as a model config ({exc})") from exc
    fields = {k: v for k, v in config.items() if k not in INCIDENTAL_CONFIG}
    if memo is not None:
        try:
            atomic_write_json(memo, {"config_sha256": key, "transformers": _transformers_version(), "fields": fields})
        except (OSError, TypeError, ValueError):  # a read-only cache (or a field JSON cannot hold): not remembered
            pass
    return fields


def _transformers_version() -> str:
    from importlib.metadata import version

    return version("transformers")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FingerprintError(f"{path}: cannot be read ({exc})") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise FingerprintError(f"{path}: not valid JSON ({exc})") from exc


def tokenizer_digest(folder: Path) -> str:
    """Hash of the vocabulary, merges, normalisation and special tokens."""
    digest = hashlib.sha256()
    fast = folder / "tokenizer.json"
    if fast.is_file():
        data = _read_json(fast)
        if not isinstance(data, dict):
            raise FingerprintError(f"{fast}: expected a JSON object")
        digest.update(json.dumps({k: data.get(k) for k in TOKENIZER_PARTS}, sort_keys=True).encode())
    else:  # a slow tokenizer: its vocabulary files as they are
        for name in SLOW_TOKENIZER_FILES:
            if (folder / name).is_file():
                digest.update(name.encode() + hashlib.sha256(_read_bytes(folder / name)).digest())
    for name in TOKEN_FILES:  # absent from the packaged models, so their fingerprints are what they were
        if (folder / name).is_file():
            digest.update(name.encode() + hashlib.sha256(_read_bytes(folder / name)).digest())
    settings = folder / "tokenizer_config.json"
    if settings.is_file():
        data = _read_json(settings)
        if not isinstance(data, dict):
            raise FingerprintError(f"{settings}: expected a JSON object")
        special = {k: v for k, v in data.items() if k.endswith("_token") or k.startswith("add_")}
        digest.update(json.dumps(special, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def weight_files(folder: Path, allow_pickle: bool = True) -> list[Path]:
    """Exactly the weight files the loader would load from `folder`, in its order of preference:
    `model.safetensors`, else the shards its index names, else (if allowed) the pickled equivalents.

    Any other file (a backup `old.safetensors`, a stray shard) is not the model and is not hashed."""
    for single, index in (SAFE_WEIGHTS, PICKLED_WEIGHTS) if allow_pickle else (SAFE_WEIGHTS,):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            return _shards(folder, folder / index)
    expected = " or ".join(SAFE_WEIGHTS + (PICKLED_WEIGHTS if allow_pickle else ()))
    raise FingerprintError(f"{folder}: no weight files to fingerprint (expected {expected})")


def _shards(folder: Path, index: Path) -> list[Path]:
    data = _read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FingerprintError(f"{index}: field 'weight_map' must be a non-empty object of tensor name -> shard file")
    shards = []
    for name in sorted(set(weight_map.values()), key=str):
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise FingerprintError(f"{index}: 'weight_map' names {name!r}, expected a file name in {folder}")
        if not (folder / name).is_file():
            raise FingerprintError(f"{index}: 'weight_map' names shard {name!r}, which is not a file in {folder}")
        shards.append(folder / name)
    return shards


def model_fingerprint(folder: Path, dtype: str = "float32", memo_dir: Path | None = None,
                      allow_pickle: bool = True) -> str:
    """The fingerprint of the model in `folder` when loaded in `dtype` (32 hex characters).

    Every weight byte is read and hashed on each call; `memo_dir` only remembers parsed configs (keyed by
    their content)."""
    folder = Path(folder).resolve()
    config = config_fields(folder, memo_dir)
    tensors: dict[str, list[Any]] = {}
    for path in weight_files(folder, allow_pickle):
        if path.suffix == ".safetensors":
            found = tensor_digests(path)
            if path.name != SAFE_WEIGHTS[0]:
                _check_index(folder, path, found)
            tensors.update(found)
        else:  # pickled weights (opted in per model): hashed file by file, so their layout counts
            try:
                tensors[f"file:{path.name}"] = ["file", [], file_sha256(path)]
            except OSError as exc:
                raise FingerprintError(f"{path}: cannot be read ({exc})") from exc
    if config.get("tie_word_embeddings"):
        _collapse_tied(tensors, config)
    digest = hashlib.sha256(VERSION.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(json.dumps(sorted(tensors.items())).encode())
    digest.update(tokenizer_digest(folder).encode())
    digest.update(dtype.encode())
    return digest.hexdigest()[:32]


def _check_index(folder: Path, shard: Path, found: dict[str, list[Any]]) -> None:
    """A shard holds exactly the tensors its index assigns to it (the loader would miss or misplace any other)."""
    index = folder / SAFE_WEIGHTS[1]
    named = {k for k, v in _read_json(index)["weight_map"].items() if v == shard.name}
    if named != set(found):
        extra, missing = sorted(set(found) - named)[:3], sorted(named - set(found))[:3]
        raise FingerprintError(f"{index}: shard {shard.name} does not match its 'weight_map' "
                               f"(in the file, not the index: {extra}; in the index, not the file: {missing})")


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


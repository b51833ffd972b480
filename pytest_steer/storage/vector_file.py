"""Steering vectors you bring, read from their files, and control vectors written as GGUF.

* GGUF control vectors (repeng's export, llama.cpp's `--control-vector`): architecture `controlvector`,
  one 1-D tensor `direction.<k>` per layer, k >= 1. As llama.cpp applies them, `direction.<k>` is added to
  the output of block k (0-based; block 0 is never steered).
* safetensors: one 1-D tensor per layer, its name ending in the block index (`direction.5`, `layers.5`,
  `5`), added to that block's output; or a single 1-D tensor and a `layer` (from the case, or the file's
  `layer` metadata, as in the vectors pytest-steer stores beside a baseline).
* `.pt` (pickle): runs code when read, so refused unless the case sets `allow_pickle = true`.

Every error names the file and what was expected. `write_gguf` writes what `read_gguf` reads.
"""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from pytest_steer.errors import SteerError

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
ARCHITECTURE = "controlvector"

# GGUF metadata value types
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALARS = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?",
            _U64: "<Q", _I64: "<q", _F64: "<d"}
# ggml tensor types a control vector may use
_F32_TYPE, _F16_TYPE, _BF16_TYPE = 0, 1, 30
_NAMED_LAYER = re.compile(r"(?:^|[._])(\d+)$")


class VectorFileError(SteerError, ValueError):
    """A vector file cannot be read or does not fit the model; the message names the file and the field."""


def read_vectors(path: Path, layer: int | None = None, allow_pickle: bool = False) -> dict[int, torch.Tensor]:
    """{block index: float32 vector} from a GGUF control vector, a safetensors file or (opted in) a `.pt` file."""
    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"vector file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        vectors = read_gguf(path)
    elif suffix == ".safetensors":
        vectors = _read_safetensors(path, layer)
    elif suffix in (".pt", ".pth", ".bin"):
        if not allow_pickle:
            raise VectorFileError(f"{path}: a pickled file runs code when it is read; convert it to safetensors, "
                                  "or set allow_pickle = true for a file you trust")
        vectors = _read_pickle(path, layer)
    else:
        raise VectorFileError(f"{path}: unknown vector file type {suffix or '(none)'!r}: expected .gguf or "
                              ".safetensors (or .pt with allow_pickle)")
    if not vectors:
        raise VectorFileError(f"{path}: holds no vector")
    for k, vector in vectors.items():
        if vector.ndim != 1 or vector.numel() == 0:
            raise VectorFileError(f"{path}: the vector of layer {k} has shape {tuple(vector.shape)}, expected one row")
        if not bool(torch.isfinite(vector).all()):
            raise VectorFileError(f"{path}: the vector of layer {k} holds a NaN or infinite value")
    return dict(sorted(vectors.items()))


def check_fits(path: Path, vectors: dict[int, torch.Tensor], hidden_size: int, num_layers: int) -> None:
    """Every vector is as wide as the model's residual stream and names one of its blocks."""
    for k, vector in vectors.items():
        if vector.shape[0] != hidden_size:
            raise VectorFileError(f"{path}: the vector of layer {k} has {vector.shape[0]} values; this model's residual "
                                  f"stream is {hidden_size} wide (a vector made for another model?)")
        if not 0 <= k < num_layers:
            raise VectorFileError(f"{path}: layer {k} is out of range for a model with {num_layers} blocks (0..{num_layers - 1})")


# ---------------------------------------------------------------- safetensors and pickle


def _single(path: Path, tensors: dict[str, torch.Tensor], layer: int | None) -> dict[int, torch.Tensor]:
    """Tensors named by layer, or a single tensor placed at `layer`."""
    named: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():
        found = _NAMED_LAYER.search(str(name))
        if found is None:
            break
        named[int(found.group(1))] = tensor.float()
    else:
        if layer is None or len(tensors) > 1:
            return named
    if len(tensors) != 1:
        unnamed = next(n for n in tensors if _NAMED_LAYER.search(str(n)) is None)
        raise VectorFileError(f"{path}: tensor {unnamed!r} has no layer in its name; a file of several vectors names "
                              "each by the block it steers (e.g. 'direction.5')")
    if layer is None:
        raise VectorFileError(f"{path}: holds a single vector {next(iter(tensors))!r} and no layer; set `layer` in the case")
    return {layer: next(iter(tensors.values())).float()}


def _read_safetensors(path: Path, layer: int | None) -> dict[int, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise VectorFileError(f"{path}: not a readable safetensors file ({exc})") from exc
    if layer is None and len(tensors) == 1 and str(metadata.get("layer", "")).isdigit():
        layer = int(metadata["layer"])  # a vector pytest-steer stored with its accepted layer
    return _single(path, tensors, layer)


def _read_pickle(path: Path, layer: int | None) -> dict[int, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # unpickling raises anything
        raise VectorFileError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, torch.Tensor):
        data = {"vector": data}
    if not isinstance(data, dict) or not all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data.values()):
        raise VectorFileError(f"{path}: expected a tensor or a dict of tensors by layer, got {type(data).__name__}")
    return _single(path, {str(k): torch.as_tensor(v) for k, v in data.items()}, layer)


# ---------------------------------------------------------------- GGUF


def _take(f: BinaryIO, fmt: str, path: Path, what: str) -> Any:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise VectorFileError(f"{path}: the file ends inside {what} (truncated?)")
    return struct.unpack(fmt, raw)[0]


def _string(f: BinaryIO, path: Path, what: str) -> str:
    n = _take(f, "<Q", path, what)
    if n > 1 << 20:
        raise VectorFileError(f"{path}: {what} claims {n} bytes (corrupt file?)")
    raw = f.read(n)
    if len(raw) != n:
        raise VectorFileError(f"{path}: the file ends inside {what} (truncated?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VectorFileError(f"{path}: {what} is not UTF-8") from exc


def _value(f: BinaryIO, kind: int, path: Path, key: str) -> Any:
    if kind in _SCALARS:
        return _take(f, _SCALARS[kind], path, f"metadata {key!r}")
    if kind == _STR:
        return _string(f, path, f"metadata {key!r}")
    if kind == _ARR:
        item, n = _take(f, "<I", path, f"metadata {key!r}"), _take(f, "<Q", path, f"metadata {key!r}")
        if n > 1 << 24:
            raise VectorFileError(f"{path}: metadata {key!r} claims {n} entries (corrupt file?)")
        return [_value(f, item, path, key) for _ in range(n)]
    raise VectorFileError(f"{path}: metadata {key!r} has unknown value type {kind}")


def read_gguf(path: Path) -> dict[int, torch.Tensor]:
    """{block: vector} of a GGUF control vector (`direction.<k>` added to block k's output)."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise VectorFileError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
        version = _take(f, "<I", path, "the header")
        if version not in (2, 3):
            raise VectorFileError(f"{path}: GGUF version {version}; expected 2 or 3")
        n_tensors, n_kv = _take(f, "<Q", path, "the header"), _take(f, "<Q", path, "the header")
        if n_tensors > 4096 or n_kv > 4096:
            raise VectorFileError(f"{path}: the header claims {n_tensors} tensors and {n_kv} metadata keys (corrupt file?)")
        metadata = {}
        for _ in range(n_kv):
            key = _string(f, path, "a metadata key")
            metadata[key] = _value(f, _take(f, "<I", path, f"metadata {key!r}"), path, key)
        arch = metadata.get("general.architecture")
        if arch != ARCHITECTURE:
            raise VectorFileError(f"{path}: field 'general.architecture' is {arch!r}; a control vector has "
                                  f"{ARCHITECTURE!r} (is this a model file?)")
        infos = []
        for _ in range(n_tensors):
            name = _string(f, path, "a tensor name")
            n_dims = _take(f, "<I", path, f"tensor {name!r}")
            if n_dims > 4:
                raise VectorFileError(f"{path}: tensor {name!r} claims {n_dims} dimensions")
            dims = [_take(f, "<Q", path, f"tensor {name!r}") for _ in range(n_dims)]
            kind, offset = _take(f, "<I", path, f"tensor {name!r}"), _take(f, "<Q", path, f"tensor {name!r}")
            infos.append((name, dims, kind, offset))
        alignment = int(metadata.get("general.alignment", ALIGNMENT))
        start = -(-f.tell() // alignment) * alignment
        vectors: dict[int, torch.Tensor] = {}
        for name, dims, kind, offset in infos:
            found = re.fullmatch(r"direction\.(\d+)", name)
            if found is None:
                raise VectorFileError(f"{path}: tensor {name!r}: a control vector holds only 'direction.<layer>' tensors")
            layer = int(found.group(1))
            if layer == 0:
                raise VectorFileError(f"{path}: tensor 'direction.0': layer indices start at 1 (llama.cpp never steers "
                                      "block 0)")
            if len(dims) != 1:
                raise VectorFileError(f"{path}: tensor {name!r} has shape {dims}; expected one row")
            dtype = {_F32_TYPE: np.float32, _F16_TYPE: np.float16}.get(kind)
            if dtype is None and kind != _BF16_TYPE:
                raise VectorFileError(f"{path}: tensor {name!r} has ggml type {kind}; expected F32, F16 or BF16")
            width = dims[0]
            f.seek(start + offset)
            raw = f.read(width * (4 if kind == _F32_TYPE else 2))
            if len(raw) != width * (4 if kind == _F32_TYPE else 2):
                raise VectorFileError(f"{path}: the data of tensor {name!r} is cut short (truncated file?)")
            if kind == _BF16_TYPE:
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                values = bits.view(np.float32)
            else:
                values = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.float32)
            if layer in vectors:
                raise VectorFileError(f"{path}: tensor {name!r} appears twice")
            vectors[layer] = torch.from_numpy(values.copy())
        return vectors


def _put_string(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    out += struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path, vectors: dict[int, torch.Tensor], model_hint: str = "") -> None:
    """A GGUF control vector (float32 `direction.<k>` per block k >= 1), written atomically."""
    from pytest_steer.storage.files import atomic_write_bytes

    if not vectors:
        raise VectorFileError(f"{path}: no vector to write")
    if min(vectors) < 1:
        raise VectorFileError(f"{path}: a GGUF control vector cannot steer block 0 (llama.cpp's layers start at 1)")
    metadata: list[tuple[str, int, Any]] = [("general.architecture", _STR, ARCHITECTURE),
                                            ("controlvector.model_hint", _STR, model_hint),
                                            ("controlvector.layer_count", _U32, len(vectors))]
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(vectors), len(metadata)))
    for key, kind, value in metadata:
        _put_string(out, key)
        out += struct.pack("<I", kind)
        if kind == _STR:
            _put_string(out, value)
        else:
            out += struct.pack(_SCALARS[kind], value)
    data = bytearray()
    for layer, vector in sorted(vectors.items()):
        values = vector.detach().float().cpu().numpy().astype("<f4")
        _put_string(out, f"direction.{layer}")
        out += struct.pack("<IQIQ", 1, values.size, _F32_TYPE, len(data))
        data += values.tobytes()
        data += b"\0" * (-len(data) % ALIGNMENT)
    out += b"\0" * (-len(out) % ALIGNMENT)
    atomic_write_bytes(Path(path), bytes(out + data))


def main(argv: list[str] | None = None) -> int:
    """`python -m pytest_steer gguf VECTOR OUT.gguf [--layer K] [--scale S]`: a vector file (an accepted vector
    stored beside a baseline, any safetensors layout above) written as a llama.cpp / repeng control vector."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pytest_steer gguf", description=main.__doc__)
    parser.add_argument("vector", type=Path, help="a .safetensors (or .gguf) vector file")
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument("--layer", type=int, help="the block of a file holding a single vector without its layer")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the vectors (e.g. the accepted multiplier)")
    parser.add_argument("--model-hint", default="", help="the model family, recorded in the file")
    args = parser.parse_args(argv)
    try:
        vectors = read_vectors(args.vector, args.layer)
        write_gguf(args.out, {k: v * args.scale for k, v in vectors.items()}, args.model_hint)
    except VectorFileError as exc:
        print(f"python -m pytest_steer gguf: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: blocks {', '.join(map(str, vectors))}, scale {args.scale:g}")
    return 0

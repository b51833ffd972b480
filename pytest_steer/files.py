"""Atomic file writes (no torch): a crash or interrupt leaves the old file or the new one."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """A stored file is unreadable; the message names the file and what was expected."""


def shared_mode(path: str | Path) -> None:
    """Give a new file or folder the mode the umask allows (mkstemp and mkdtemp make it private),
    so a team cache is readable by the group."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    A crash or interrupt leaves either the old file or the new one, never half of one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        shared_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


# safetensors dtype codes as torch names them (the content checksum hashes torch's names)
_TORCH_DTYPES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "BF16": "torch.bfloat16",
                 "I64": "torch.int64", "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8",
                 "U8": "torch.uint8", "BOOL": "torch.bool"}


def read_verified(path: Path) -> tuple[bytes, dict[str, str]]:
    """A safetensors file's bytes and header metadata, checked against its `content_sha256` without torch.

    The hash covers names, dtypes, shapes and bytes exactly as `store.content_hash` does, so a
    truncated file, a flipped byte or a header that lies about its tensors is a StoreError.
    """
    try:
        raw = Path(path).read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size])
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: not a readable safetensors file ({exc})") from exc
    metadata = header.pop("__metadata__", None) or {}
    expected = metadata.get("content_sha256")
    if expected is None:
        raise StoreError(f"{path}: metadata has no 'content_sha256'")
    data = raw[8 + size :]
    digest = hashlib.sha256()
    try:
        for name in sorted(header):
            entry = header[name]
            start, end = entry["data_offsets"]
            if end > len(data):
                raise StoreError(f"{path}: tensor {name!r} ends at byte {end} of a {len(data)}-byte data section (truncated)")
            digest.update(f"{name}|{_TORCH_DTYPES[entry['dtype']]}|{tuple(entry['shape'])}|".encode())
            digest.update(data[start:end])
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{path}: malformed safetensors header ({exc})") from exc
    if digest.hexdigest() != expected:
        raise StoreError(f"{path}: tensor data does not match its 'content_sha256' (corrupt file)")
    return raw, metadata


def shared_dir(cache_dir: Path, run_id: str) -> Path:
    """Where one run's scores shared between cases live (the run removes them when it ends)."""
    return cache_dir / "shared" / run_id

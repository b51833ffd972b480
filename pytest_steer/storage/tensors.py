"""Tensors on disk: checksummed safetensors files and the vector cache."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load, save

from pytest_steer import __version__
from pytest_steer.storage.files import StoreError, atomic_write_bytes, read_verified


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def write_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Atomically save tensors as safetensors with a metadata header and a content checksum."""
    meta = {k: str(v) for k, v in metadata.items()}
    meta["content_sha256"] = content_hash(tensors)
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file verified against its checksum (`files.read_verified`); StoreError if damaged."""
    raw, metadata = read_verified(path)
    try:
        return load(raw), metadata
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise StoreError(f"{path}: not a readable safetensors file ({exc})") from exc


def cache_key(parts: Mapping[str, Any]) -> str:
    """Stable hash of everything a cached artefact depends on (plus the plugin version)."""
    payload = json.dumps({**parts, "plugin_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CacheOutcome:
    """What the cache did for one lookup (for reports and tests)."""

    path: Path
    hit: bool
    rebuilt_corrupt: bool = False


class VectorCache:
    """Content-addressed safetensors files under `<root>/<namespace>/<key>.safetensors`; `code` (the identity of
    the code that builds the entries) is part of every key, so an edit of that code never reuses an entry."""

    def __init__(self, root: Path, code: str = "") -> None:
        self.root = Path(root)
        self.code = code

    def path(self, namespace: str, key: str) -> Path:
        return self.root / namespace / f"{key}.safetensors"

    def get_or_build(
        self,
        namespace: str,
        parts: Mapping[str, Any],
        build: Callable[[], Mapping[str, torch.Tensor]],
    ) -> tuple[dict[str, torch.Tensor], CacheOutcome]:
        """Return the cached tensors for `parts`, building and storing them on a miss.

        A hit needs no lock (a read-only team cache serves hits); on a miss a lock per key keeps
        parallel workers from building the same entry twice. A corrupt or truncated file is
        rebuilt, never used; a file this user cannot read is left alone, never deleted.
        """
        key = cache_key({**parts, "code": self.code} if self.code else parts)
        path = self.path(namespace, key)
        hit = _cached(path, key)
        if hit is not None:
            return hit, CacheOutcome(path, hit=True)
        if path.exists() and not os.access(path, os.R_OK):  # another user's file: never replaced
            return {k: v.detach().cpu() for k, v in build().items()}, CacheOutcome(path, hit=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(path) + ".lock")
            lock.acquire()
        except OSError:  # a cache this user may read but not write: build, and keep the result in memory
            return {k: v.detach().cpu() for k, v in build().items()}, CacheOutcome(path, hit=False)
        try:
            hit = _cached(path, key)  # another worker may have built it while we waited
            if hit is not None:
                return hit, CacheOutcome(path, hit=True)
            rebuilt = path.exists()
            tensors = {k: v.detach().cpu() for k, v in build().items()}
            metadata = {"cache_key": key, "namespace": namespace, "parts": json.dumps(parts, sort_keys=True, default=str)}
            write_tensors(path, tensors, metadata)  # replaces a damaged file atomically
            return tensors, CacheOutcome(path, hit=False, rebuilt_corrupt=rebuilt)
        finally:
            lock.release()


def _cached(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    """The tensors at `path` if it is intact and was stored under `key`."""
    if not path.exists() or not os.access(path, os.R_OK):
        return None
    try:
        tensors, metadata = read_tensors(path)
    except StoreError:
        return None
    if metadata.get("cache_key") != key or not all_finite(tensors):
        return None  # another key's, or numbers no computation of ours stores: rebuilt
    return tensors


def all_finite(tensors: Mapping[str, torch.Tensor]) -> bool:
    """No NaN or infinity in any floating-point tensor."""
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())

"""Atomic file writes (no torch): a crash or interrupt leaves the old file or the new one."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_steer.errors import SteerError


class StoreError(SteerError):
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
    refused = not_regular(path)  # a FIFO is never opened
    if refused:
        raise StoreError(f"{path}: not a readable safetensors file ({refused})")
    try:
        raw = Path(path).read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size])
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreError(f"{path}: not a readable safetensors file ({exc})") from exc
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
        raise StoreError(f"{path}: malformed safetensors header (expected an object of tensors with a "
                         "'__metadata__' object)")
    metadata = header.pop("__metadata__", None) or {}
    expected = metadata.get("content_sha256")
    if not isinstance(expected, str):
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


def hold_run(cache_dir: Path, run_id: str) -> Any:
    """Lock the run's shared folder for as long as the run lives (the OS drops it if the run is killed), after
    removing the shared folders of runs killed before they could (their locks are free). None on a read-only
    cache."""
    from filelock import FileLock, Timeout

    root = Path(cache_dir) / "shared"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(root / f"{run_id}.lock"))
        lock.acquire(timeout=0)
    except (OSError, Timeout):
        return None
    for entry in root.iterdir():
        if entry.suffix == ".lock" or entry.name == run_id or not entry.is_dir():
            continue
        try:
            if not (root / f"{entry.name}.lock").exists() and time.time() - entry.stat().st_mtime < 86400:
                continue  # no lock: a run of an older version, maybe alive; removed once a day old
            other = FileLock(str(root / f"{entry.name}.lock"))
            other.acquire(timeout=0)
        except (OSError, Timeout):  # a live run's, or gone meanwhile
            continue
        try:
            reclaim(root, entry.name)
            Path(other.lock_file).unlink(missing_ok=True)
        finally:
            other.release()
    return lock


def reclaim(folder: Path, pattern: str) -> list[Path]:
    """Remove what a killed process left under `folder` matching `pattern` (staging folders, partial files).

    Call it only while holding the lock that every writer of such entries holds: whatever matches then
    belongs to a writer that died."""
    import shutil

    removed = []
    for leftover in Path(folder).glob(pattern):
        try:
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            removed.append(leftover)
        except OSError:  # not ours to remove (another user's, read-only): left as it is
            pass
    return removed


def check_output(path: Path, what: str, create: bool = False) -> None:
    """An output path must be a regular file or a new name in an existing (with `create`: creatable), writable
    folder, never a folder, a device, a FIFO or a socket, which a rename would replace; StoreError naming `what`
    otherwise."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:  # a symlink loop, a name too long, a component that is a file
        raise StoreError(f"{what} {path}: cannot be written ({exc.strerror or exc})") from exc
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise StoreError(f"{what} {path}: is {kind}; expected a regular file or a new file name")
    parent = Path(path).parent
    if create and not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise StoreError(f"{what} {path}: folder {parent} cannot be created ({exc.strerror or exc})") from exc
    if not parent.is_dir():
        raise StoreError(f"{what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{what} {path}: folder {parent} is not writable")


MAX_DEPTH = 64  # deeper nesting than any file this project writes; beyond it a reader would recurse too far
_INT64 = 2**63


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def read_text(path: str | Path, error: type[Exception], what: str, where: str | None = None, hint: str = "") -> str:
    """A regular file's UTF-8 text (a leading BOM dropped, line ends as written).

    Anything else raises `error("<where>: cannot read <what> (<reason>)<hint>")`, `where` being the path
    unless given; a folder, FIFO or device is refused from its `stat`, never opened.
    """
    where = str(path) if where is None else where

    def fail(reason: str) -> Exception:
        return error(f"{where}: cannot read {what} ({reason}){hint}")

    refused = not_regular(path)
    if refused:
        raise fail(refused)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text: byte {exc.start}") from exc


def not_regular(path: str | Path) -> str | None:
    """Why `path` cannot be read as a file, from its `stat` alone (a FIFO is never opened); None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return getattr(exc, "strerror", None) or str(exc)
    return None if stat.S_ISREG(mode) else f"it is not a regular file but {_file_kind(mode)}"


def unusable_value(data: Any) -> str | None:
    """Why parsed JSON or TOML cannot be used as plain data, naming the field; None if it can.

    Refused: nesting deeper than MAX_DEPTH, a string that is not UTF-8 text (an unpaired surrogate
    from a `\\ud800` escape) and an integer beyond 64 bits.
    """
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        where, value, depth = stack.pop()
        field = f"field '{where}'" if where else "the document"
        if depth > MAX_DEPTH:
            return f"{field} is nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, str) and not _is_utf8(value):
            return f"{field} holds text that is not UTF-8 (an unpaired surrogate)"
        if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
            return f"{field} holds an integer beyond 64 bits"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_utf8(key):
                    return f"{field} has a key that is not UTF-8 (an unpaired surrogate)"
                name = key if key.isprintable() else repr(key)[1:-1]  # a message stays one line
                stack.append((f"{where}.{name}" if where else name, item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value))
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_parsed(path: str | Path, error: type[Exception], what: str, parse: Callable[[str], Any], syntax: str,
                where: str | None = None, hint: str = "") -> Any:
    """A regular file parsed by `parse` (JSON, TOML: a parse error is a ValueError) into plain data (see `read_text`
    and `unusable_value`); `error` naming the file otherwise."""
    text = read_text(path, error, what, where, hint)
    where = str(path) if where is None else where
    try:
        data = parse(text)
    except RecursionError as exc:
        raise error(f"{where}: cannot read {what} (not valid {syntax}: nested too deeply){hint}") from exc
    except ValueError as exc:
        raise error(f"{where}: cannot read {what} (not valid {syntax}: {exc}){hint}") from exc
    problem = unusable_value(data)
    if problem:
        raise error(f"{where}: cannot read {what} (not usable {syntax}: {problem}){hint}")
    return data


def read_json(path: str | Path, error: type[Exception], what: str, where: str | None = None, hint: str = "") -> Any:
    """A regular file's JSON as plain data; `error` naming the file otherwise."""
    return read_parsed(path, error, what, json.loads, "JSON", where, hint)


def verified_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a verified safetensors file (`read_verified`); a path that is not a regular file
    or a header that is not the expected object of tensor entries is a StoreError too."""
    return read_verified(path)[1]

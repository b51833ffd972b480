"""Results keyed by their inputs: a case whose every input is unchanged is judged from its stored result.

The key covers everything that can change a result (model fingerprint, device, dtype,
task data, split sizes, seed, method settings, library versions, the plugin's own source). Gates,
tolerances and baselines are not inputs: they are applied afresh on every run. A stored result
carries a checksum of its content; one that does not verify is recomputed, never used.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytest_steer.storage.files import atomic_write_json
from pytest_steer.storage.identity import plugin_source_hash
from pytest_steer.record import CaseResult

@dataclass(frozen=True)
class ResultInputs:
    """Everything a case's result depends on."""

    case: str
    model_source: dict[str, Any]
    fingerprint: str
    device: str
    dtype: str
    method: str
    task_sha256: str
    counts: dict[str, int]
    seed: int
    settings: dict[str, Any]
    versions: dict[str, str]
    adapter_override: dict[str, Any] | None = None
    gate_vector: str = "extracted"
    replay: str | None = None  # checksum of the accepted vector replayed on this model, if any
    quick: bool = False  # --steer-quick: the accepted vector replayed alone, no search (never a full result)
    sequential: str | None = None  # --steer-sequential: digest of the stopping rule's inputs (gate, accepted outcomes)
    control: str | None = None  # the side-effect control scored with it: digest of its questions and count
    files: dict[str, str] | None = None  # files the settings name (a vector you bring), by content hash
    source: str = field(default_factory=lambda: plugin_source_hash())  # the code's identity (identity.py)

    def keyed(self) -> dict[str, Any]:
        """The inputs the key covers: all but where the model came from (the fingerprint covers its files,
        so the same weights from another folder or alias reuse the result)."""
        return {k: v for k, v in asdict(self).items() if k != "model_source"}

    def key(self) -> str:
        return hashlib.sha256(_canonical(self.keyed())).hexdigest()[:32]


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultCache:
    """`<cache>/results/<key>.json`: one computed result per set of inputs, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, inputs: ResultInputs) -> Path:
        return self.root / f"{inputs.key()}.json"

    def get(self, inputs: ResultInputs) -> CaseResult | None:
        """The stored result for exactly these inputs, marked as reused; None if absent or not trustworthy."""
        path = self.path(inputs)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:
            return self._reject(path, f"unreadable ({type(exc).__name__}: {exc})")
        try:
            body = data["body"]
            if hashlib.sha256(_canonical(body)).hexdigest() != data["sha256"]:
                return self._reject(path, "content does not match its checksum")
            if {k: v for k, v in body["inputs"].items() if k != "model_source"} != json.loads(_canonical(inputs.keyed())):
                return self._reject(path, "stored for other inputs")
            result = CaseResult.from_baseline(body["result"])
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            return self._reject(path, f"malformed ({type(exc).__name__}: {exc})")
        if result.vector_file and not Path(result.vector_file).is_file():
            return self._reject(path, f"its vector file {result.vector_file} is gone")
        return replace(result, reused=True)

    def _reject(self, path: Path, why: str) -> None:
        warnings.warn(f"pytest-steer: stored result {path} not used: {why}; recomputing", stacklevel=2)
        return None

    def put(self, inputs: ResultInputs, result: CaseResult) -> None:
        """Store a freshly computed result under its inputs (atomically; a read-only cache only skips it)."""
        body = {"inputs": asdict(inputs), "result": result.to_json()}
        body = json.loads(_canonical(body))
        try:
            atomic_write_json(self.path(inputs), {"sha256": hashlib.sha256(_canonical(body)).hexdigest(), "body": body})
        except OSError:
            pass

"""Candidate models: `--steer-candidate ALIAS=SOURCE` runs ALIAS's cases on another source, judged against
ALIAS's accepted baselines, without editing a case file."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from pytest_steer.errors import SteerError
from pytest_steer.models.packaged import PACKAGED_MODELS
from pytest_steer.models.spec import ModelSpec

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PREFIXES = ("packaged", "path", "hub", "gguf")


class CandidateError(SteerError, ValueError):
    """A `--steer-candidate` value that cannot be used; the message says what was expected."""


@dataclass(frozen=True)
class Candidate:
    """Where ALIAS's cases run instead of the source their case file gives."""

    alias: str
    kind: str  # packaged, folder, hub or gguf (as in ModelSpec)
    location: str
    revision: str | None = None

    def apply(self, spec: ModelSpec) -> ModelSpec:
        """The case file's model spec with this source (its name, layout override and opt-ins kept)."""
        return replace(spec, kind=self.kind, location=self.location, revision=self.revision)

    def describe(self) -> str:
        return self.location + (f"@{self.revision}" if self.revision else "")


def parse_candidate(text: str, here: Path) -> Candidate:
    """`ALIAS=SOURCE`; SOURCE is a packaged alias, a folder, a .gguf file or a hub id `org/name[@revision]`,
    optionally prefixed `packaged:`, `path:`, `gguf:` or `hub:`. Relative paths are taken from `here`."""
    where = f"--steer-candidate {text!r}"
    alias, sep, source = text.partition("=")
    alias, source = alias.strip(), source.strip()
    if not sep or not alias or not source:
        raise CandidateError(f"{where}: expected ALIAS=SOURCE (the model name the cases use, then where the "
                             "candidate comes from), e.g. smollm2-135m=./my-finetune")
    prefix, colon, rest = source.partition(":")
    if colon and prefix in _PREFIXES:
        return _explicit(alias, prefix, rest.strip(), here, where)
    if source in PACKAGED_MODELS:
        return Candidate(alias, "packaged", source)
    path = _path(source, here)
    if path.is_dir():
        return Candidate(alias, "folder", str(path))
    if source.endswith(".gguf"):
        return _explicit(alias, "gguf", source, here, where)
    name, _, revision = source.partition("@")
    if _HUB_ID.match(name) and not source.startswith((".", "/", "~")):
        return Candidate(alias, "hub", name, revision or None)
    raise CandidateError(
        f"{where}: {source!r} is not a packaged alias ({', '.join(PACKAGED_MODELS)}), an existing folder, "
        "a .gguf file or a hub id org/name[@revision]"
    )


def _explicit(alias: str, kind: str, source: str, here: Path, where: str) -> Candidate:
    if kind == "packaged":
        if source not in PACKAGED_MODELS:
            raise CandidateError(f"{where}: unknown packaged alias {source!r} (known: {', '.join(PACKAGED_MODELS)})")
        return Candidate(alias, "packaged", source)
    if kind == "hub":
        name, _, revision = source.partition("@")
        if not _HUB_ID.match(name):
            raise CandidateError(f"{where}: expected a hub id org/name[@revision], got {source!r}")
        return Candidate(alias, "hub", name, revision or None)
    path = _path(source, here)
    if kind == "path":
        if not path.is_dir():
            raise CandidateError(f"{where}: folder {path} does not exist")
        return Candidate(alias, "folder", str(path))
    if not path.is_file():
        raise CandidateError(f"{where}: GGUF file {path} does not exist")
    return Candidate(alias, "gguf", str(path))


def _path(source: str, here: Path) -> Path:
    path = Path(source).expanduser()
    return path if path.is_absolute() else (here / path).resolve()


def parse_candidates(values: list[str], here: Path) -> dict[str, Candidate]:
    """Every `--steer-candidate` by alias; an alias given twice is an error."""
    out: dict[str, Candidate] = {}
    for text in values:
        candidate = parse_candidate(text, here)
        if candidate.alias in out:
            raise CandidateError(f"--steer-candidate: {candidate.alias!r} is given twice "
                                 f"({out[candidate.alias].describe()} and {candidate.describe()})")
        out[candidate.alias] = candidate
    return out

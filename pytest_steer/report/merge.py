"""Merge the JSON reports of a suite split over machines into one report (and, with --update, into baselines).

    python -m pytest_steer merge steer-*.json -o steer-merged.json
    python -m pytest_steer merge steer-*.json -o steer-merged.json --update --vectors vectors/*

Each shard is a `--steer-report` file of one slice of the suite (say, one model per CI job).
The merge is refused when a case is in more than one shard, or when the shards' results were
computed with different library versions or different fingerprints of the same model.

A shard must be a complete run (`"complete": true`): a run whose selected cases did not all
report (a killed worker, an interrupt) would merge into a suite that silently lacks them.

Exit status: 0 every case passed, xfailed or xpassed; 1 a case failed, errored or has no
baseline (as pytest would exit for the whole suite); 2 the merge was refused or a shard is
unreadable (nothing written); 5 the shards hold no case.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pytest_steer.storage.baselines import BaselineStore
from pytest_steer.cases.casefile import task_slot
from pytest_steer.errors import SteerError
from pytest_steer.storage.files import StoreError, check_output, read_json, verified_metadata
from pytest_steer.record import CaseResult, RecordError, short_repr
from pytest_steer.report.cases import CaseReport, counts, render_table, write_json_report
from pytest_steer.report.saved import report_case

PASSING = frozenset({"pass", "xfail", "xpass"})
REFUSED, NO_CASES = 2, 5


class MergeError(SteerError):
    """The shards cannot be merged; the message names the file(s) and the case or field at fault."""


@dataclass(frozen=True)
class Shard:
    """One shard's report: where it was read from, its cases and the baselines it found unused."""

    path: Path
    cases: tuple[CaseReport, ...]
    unused_baselines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Seen:
    """The first case that showed a value (a library version, a model fingerprint), to name it in a refusal."""

    value: str
    path: Path
    case: str


def load_shard(path: Path) -> Shard:
    """A shard report of a complete run written by `--steer-report`; MergeError naming the file and the field
    if it is not one."""
    data = read_json(path, MergeError, "the shard report")
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise MergeError(f"{path}: not a pytest-steer report (expected a JSON object with a 'cases' list, "
                         "as --steer-report writes)")
    check_complete(path, data)
    cases = tuple(_case(path, i, raw) for i, raw in enumerate(data["cases"]))
    unused = data.get("unused_baselines") or []
    if not isinstance(unused, list) or not all(isinstance(u, str) for u in unused):
        raise MergeError(f"{path}: 'unused_baselines' must be a list of paths, got {short_repr(unused)}")
    return Shard(Path(path), cases, tuple(unused))


def check_complete(path: Path, data: dict[str, Any]) -> None:
    """The shard's run reported every case it selected: `"complete": true` and nothing `"unfinished"`."""
    if "complete" not in data:
        raise MergeError(f"{path}: no field 'complete': written by an older pytest-steer or by an interrupted run; "
                         "re-run it")
    complete, unfinished = data["complete"], data.get("unfinished", [])
    if not isinstance(complete, bool):
        raise MergeError(f"{path}: field 'complete': expected true or false, got {short_repr(complete)}")
    if not isinstance(unfinished, list) or not all(isinstance(u, str) for u in unfinished):
        raise MergeError(f"{path}: field 'unfinished': expected a list of case ids, got {short_repr(unfinished)}")
    if not complete and data.get("state") == "running":
        raise MergeError(f"{path}: field 'complete' is false: the run never finished (state 'running': it was killed "
                         "or is still running); re-run it")
    if not complete:
        more = f" and {len(unfinished) - 10} more" if len(unfinished) > 10 else ""
        shown = ", ".join(map(repr, unfinished[:10])) + more
        raise MergeError(f"{path}: field 'complete' is false: {len(unfinished)} selected case(s) have no result "
                         f"({shown or 'none listed'}); re-run them")
    if unfinished:
        raise MergeError(f"{path}: field 'unfinished' lists {len(unfinished)} case(s) ({short_repr(unfinished)}) but "
                         "'complete' is true")


def _case(path: Path, index: int, raw: Any) -> CaseReport:
    if not isinstance(raw, dict):
        raise MergeError(f"{path}: case #{index} is malformed (expected an object, got {type(raw).__name__})")
    cid = raw.get("id")
    named = cid if isinstance(cid, str) and cid.isprintable() else short_repr(cid)
    label = f"case #{index}" + ("" if cid is None else f" ({named})")
    try:
        return report_case(raw)
    except RecordError as exc:
        raise MergeError(f"{path}: {label} is malformed ({exc})") from exc


def check_unique(shards: Sequence[Shard]) -> None:
    """Every case id in one shard only (a case in two shards would be counted twice)."""
    first: dict[str, Path] = {}
    for shard in shards:
        for case in shard.cases:
            if case.id in first:
                where = "twice in" if first[case.id] == shard.path else f"in both {first[case.id]} and"
                raise MergeError(f"case {case.id} is {where} {shard.path}: a merge would count it twice; "
                                 "split the suite so each case runs in one job")
            first[case.id] = shard.path


def check_versions(shards: Sequence[Shard]) -> None:
    """Every result computed with the same library versions, and each model with one fingerprint.

    Cases without a result (errors) carry no provenance and take no part."""
    versions: dict[str, Seen] = {}
    fingerprints: dict[str, Seen] = {}
    packages = sorted({name for s in shards for c in s.cases if c.result for name in c.result.provenance.versions})
    for shard in shards:
        for case in shard.cases:
            if case.result is None:
                continue
            p = case.result.provenance
            for name in packages:
                _agree(versions, name, p.versions.get(name, "(not recorded)"), shard.path, case.id, f"{name} version")
            _agree(fingerprints, case.result.model, p.fingerprint, shard.path, case.id,
                   f"fingerprint of model {case.result.model}")


def _agree(seen: dict[str, Seen], key: str, value: str, path: Path, case: str, what: str) -> None:
    first = seen.setdefault(key, Seen(str(value), path, case))
    if first.value != str(value):
        raise MergeError(f"shards disagree on the {what}: {first.value} in {first.path} (case {first.case}), "
                         f"{value} in {path} (case {case}); rerun them with the same versions")


def merge(shards: Sequence[Shard]) -> list[CaseReport]:
    """The cases of all shards, by id; MergeError if a case is counted twice or the versions differ."""
    check_unique(shards)
    check_versions(shards)
    return sorted((c for s in shards for c in s.cases), key=lambda c: c.id)


def unused_everywhere(shards: Sequence[Shard]) -> list[str]:
    """Baselines that every shard found unused (one shard's unused baseline may be another's case)."""
    if not shards:
        return []
    common = set(shards[0].unused_baselines)
    for shard in shards[1:]:
        common &= set(shard.unused_baselines)
    return sorted(common)


def exit_status(reports: Sequence[CaseReport]) -> int:
    """0 if every case passed (or xfailed / xpassed), 1 otherwise, 5 if there is no case."""
    if not reports:
        return NO_CASES
    return 0 if all(r.status in PASSING for r in reports) else 1


def find_vector(case: str, recorded: Path, vector_dirs: Sequence[Path]) -> Path:
    """A case's staged vector: where its shard wrote it (`recorded`), else `<dir>/<method>/<file name>`
    under one of `vector_dirs` (a shard's `<cache>/accepted/` folder, copied here); MergeError if that
    leads outside the folder."""
    candidates = [recorded] + [_under(Path(d), case, recorded) for d in vector_dirs]
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    hint = "" if vector_dirs else "; pass the shard's <cache>/accepted/ folder with --vectors DIR"
    raise MergeError(f"case {case}: its vector was not found (looked at {looked}){hint}")


def _under(folder: Path, case: str, recorded: Path) -> Path:
    """`<folder>/<method>/<file name>` of a recorded vector path, refused unless it stays inside `folder`."""
    path = folder / recorded.parent.name / recorded.name
    try:
        inside = bool(recorded.name) and path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError):  # a NUL in the path, a symlink loop
        inside = False
    if not inside:
        raise MergeError(f"case {case}: field 'result.vector_file' ({str(recorded)!r}) leads outside "
                         f"--vectors {folder}")
    return path


def updatable(reports: Sequence[CaseReport]) -> list[CaseResult]:
    """The results `--update` stores: of every case that has one and did not error (as `--steer-update`)."""
    return [r.result for r in reports if r.result is not None and r.status != "error"]


def plan_update(reports: Sequence[CaseReport], vector_dirs: Sequence[Path]) -> list[CaseResult]:
    """Each result to store, pointing at a vector that was found and verified; MergeError before anything
    is written if one is missing, damaged or staged for another case."""
    return [_located(result, vector_dirs) for result in updatable(reports)]


def _located(result: CaseResult, vector_dirs: Sequence[Path]) -> CaseResult:
    if result.vector_file is None:
        return result
    path = find_vector(result.id, Path(result.vector_file), vector_dirs)
    try:
        metadata = verified_metadata(path)
    except StoreError as exc:
        raise MergeError(f"case {result.id}: {exc}") from exc
    if metadata.get("case", result.id) != result.id:
        raise MergeError(f"case {result.id}: {path} holds the vector of case {metadata['case']}")
    return replace(result, vector_file=str(path))


def write_baselines(results: Sequence[CaseResult], store: BaselineStore) -> list[Path]:
    """Store every planned result as its case's baseline; the files written."""
    written: list[Path] = []
    for result in results:
        written.extend(store.write(result, task_slot(result.task, result.variant)))
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pytest_steer merge", description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 all passed, 1 a case failed, errored or is missing, "
                                            "2 refused or unreadable, 5 no cases")
    parser.add_argument("shards", type=Path, nargs="+", metavar="SHARD.json", help="reports written by --steer-report")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the merged report")
    parser.add_argument("--update", action="store_true", help="also write the baselines of the merged cases")
    parser.add_argument("--baseline-dir", type=Path, default=Path("baselines"), help="default: ./baselines")
    parser.add_argument("--vectors", type=Path, action="append", default=[], metavar="DIR",
                        help="a shard's <cache>/accepted/ folder, searched for vectors not found where the shard "
                             "wrote them (repeatable)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        check_output(args.output, "-o", create=True)
        shards = [load_shard(path) for path in args.shards]
        reports = merge(shards)
        planned = plan_update(reports, args.vectors) if args.update else []
    except (MergeError, StoreError) as exc:
        print(f"merge refused: {exc}", file=sys.stderr)
        return REFUSED
    try:
        write_json_report(args.output, reports, {"unused_baselines": unused_everywhere(shards), "complete": True,
                                                 "unfinished": [], "merged_from": [str(s.path) for s in shards]})
    except (StoreError, OSError) as exc:
        print(f"merge stopped: cannot write {args.output} ({exc})", file=sys.stderr)
        return REFUSED
    width = shutil.get_terminal_size().columns
    print(render_table(reports, width, sys.stdout.isatty()), end="")
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts(reports).items()))
    print(f"{len(reports)} steering cases from {len(shards)} shards: {tally or 'none'}")
    print(f"merged report written: {args.output}")
    if args.update:
        try:
            written = write_baselines(planned, BaselineStore(args.baseline_dir))
        except (StoreError, OSError) as exc:
            print(f"baseline update stopped: {exc}", file=sys.stderr)
            return REFUSED
        for path in written:
            print(f"baseline written: {path}")
    return exit_status(reports)


if __name__ == "__main__":
    sys.exit(main())

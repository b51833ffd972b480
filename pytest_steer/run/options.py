"""The plugin's options: resolved once from the command line (which wins) and ini."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_steer.cases.candidate import Candidate, CandidateError, parse_candidates
from pytest_steer.run.device import DEVICE_FORM, DEVICES, DTYPES
from pytest_steer.judge.stats import MULTIPLE

_OPTIONS = (
    ("update", "store_true", "write or refresh the baselines of the cases that ran (controller only, atomic)"),
    ("rerun", "store_true", "recompute every case instead of reusing results stored under unchanged inputs"),
    ("quick", "store_true", "judge a case first by replaying its accepted vector at the accepted setting on the test "
                            "items (no extraction, no layer search); only a case whose replay regresses against the "
                            "baseline runs the full protocol. Methods without a stored vector (DoLa) run in full"),
    ("sequential", "store_true", "score a case's test items in a fixed random order and stop once anytime-valid "
                                 "confidence sequences decide its gate and rule out a regression (a likely regression "
                                 "is judged on every item); for methods that score test items one by one (DoLa)"),
    ("cache-dir", "store", "directory for fetched models, converted weights and cached vectors"),
    ("baseline-dir", "store", "directory of baselines (default: <rootdir>/baselines)"),
    ("report", "store", "write the run's results as JSON to this path"),
    ("threshold", "store", "minimum improvement steered - unsteered for a case to pass (default 0.1)"),
    ("tolerance", "store", "allowed drop of a score (steered, unsteered, 5-shot) below the stored baseline: a number "
                           ">= 0, or 'auto' (default): the smallest drop each case's test split can detect at the "
                           "run's per-comparison level"),
    ("regression", "store", "what a drop beyond the tolerance must also be to fail: 'significant' (default; paired "
                            "McNemar or sign-flip test against the baseline's per-item outcomes at --steer-alpha) or "
                            "'tolerance' (any such drop fails)"),
    ("alpha", "store", "error rate of the run's paired regression tests (default 0.05): family-wise under holm, "
                       "false discovery rate under bh, per comparison under none"),
    ("multiple", "store", "correction of the paired regression tests across all cases of a run: 'holm' (default; "
                          "family-wise error <= alpha), 'bh' (Benjamini-Hochberg, false discovery rate <= alpha) or "
                          "'none' (each comparison at alpha)"),
    ("device", "store", "where models run: auto (default: cuda:0 if a GPU is visible, else mps, else cpu), cpu, cuda, "
                        "cuda:N or mps; a model's own `device` in its case file wins; under xdist worker k takes GPU k mod G"),
    ("dtype", "store", "weight dtype: auto (default: float32 on the CPU, bfloat16 on a GPU), float32, bfloat16 or "
                       "float16; a model's own `dtype` wins. Scores accumulate in float32 whatever the weights"),
    ("gpus-per-worker", "store", "GPUs each xdist worker takes (default 1; more for models sharded with device_map = "
                                 "\"auto\")"),
    ("candidate", "append", "ALIAS=SOURCE: run the selected cases of model ALIAS on SOURCE (a packaged alias, a folder, "
                            "a .gguf file or a hub id org/name[@revision]) and judge them against ALIAS's accepted "
                            "baselines (repeatable; baselines change only with --steer-update)"),
    ("min-recovery", "store", "optional minimum of steered / ICL accuracy"),
    ("html", "store", "write a self-contained HTML report (heatmaps, curves, provenance) to this path"),
    ("compare", "store", "compare this run with a saved --steer-report JSON file"),
    ("compare-fail", "store", "with --steer-compare: fail the run when a case's steered score dropped by more than this"),
    ("progress", "store", "seconds between the progress lines of busy cases on the terminal, also under xdist "
                          "(default 30; 0: none)"),
    ("group", "store", "unit of work for xdist --dist loadgroup: 'case' (default; every worker busy, a model may load "
                       "on several workers) or 'model' (all cases of a model on one worker, loaded once)"),
)


@dataclass(frozen=True)
class SteerOptions:
    """Options resolved from the command line (which wins) and ini."""

    cache_dir: Path
    baseline_dir: Path
    update: bool
    threshold: float
    tolerance: float | None  # None: "auto"
    min_recovery: float | None
    report_path: Path | None
    compare_path: Path | None = None
    compare_fail: float | None = None
    rerun: bool = False
    quick: bool = False  # judge by the replayed accepted vector first; the full protocol only where it regresses
    sequential: bool = False  # stop scoring test items once the verdict is decided (methods that score one by one)
    html_path: Path | None = None
    group: str = "case"
    regression: str = "significant"
    alpha: float = 0.05
    multiple: str = "holm"
    device: str = "auto"
    dtype: str = "auto"
    gpus_per_worker: int = 1
    progress_every: float = 30.0
    candidates: dict[str, Candidate] = field(default_factory=dict)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("steer", "pytest-steer: steering regression suite")
    for name, action, help_text in _OPTIONS:
        key = "steer_" + name.replace("-", "_")
        kwargs: dict[str, Any] = {"action": action, "dest": key, "help": help_text}
        if action in ("store", "append"):
            kwargs["default"] = None
        group.addoption(f"--steer-{name}", **kwargs)
        if action == "append":
            continue  # per run only: a candidate in an ini file would silently replace a model on every run
        if name in ("rerun", "quick", "sequential"):
            parser.addini(key, help_text + " (ini)", type="bool", default=False)
        elif name != "update":
            parser.addini(key, help_text + " (ini)", default="")


def _raw_option(config: pytest.Config, key: str) -> tuple[Any, str]:
    """The option's raw value (command line first, then ini) and where it came from, for messages."""
    raw = config.getoption(key)
    if raw is None:
        return config.getini(key), f"ini key {key}"
    return raw, f"--{key.replace('_', '-')}"


def _float_option(config: pytest.Config, key: str, default: float | None) -> float | None:
    raw, origin = _raw_option(config, key)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{origin}: expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise pytest.UsageError(f"{origin}: expected a finite number, got {raw!r}")
    return value


def _path_option(config: pytest.Config, key: str, default: Path) -> Path:
    raw = config.getoption(key)
    if raw:
        return _resolved(raw, key)
    raw = config.getini(key)
    if raw:
        path = Path(raw).expanduser()
        return path if path.is_absolute() else _resolved(config.rootpath / path, key)
    return _resolved(default, key)


def _resolved(raw: str | Path, key: str) -> Path:
    """An absolute path; a symlink loop or an unusable name is a usage error naming the option."""
    try:
        return Path(raw).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # RuntimeError: pathlib's symlink loop
        raise pytest.UsageError(f"--{key.replace('_', '-')} {raw}: not a usable path ({exc})") from None


def resolve_options(config: pytest.Config) -> SteerOptions:
    default_cache = Path(os.environ.get("PYTEST_STEER_CACHE_DIR", Path.home() / ".cache" / "pytest-steer"))
    report = config.getoption("steer_report") or config.getini("steer_report") or None
    if config.getoption("steer_compare_fail") is not None and not (config.getoption("steer_compare") or config.getini("steer_compare")):
        raise pytest.UsageError("--steer-compare-fail needs --steer-compare PATH (the saved report to compare with)")
    quick = bool(config.getoption("steer_quick") or config.getini("steer_quick"))
    sequential = bool(config.getoption("steer_sequential") or config.getini("steer_sequential"))
    for name, on in (("quick", quick), ("sequential", sequential)):
        if on and config.getoption("steer_update"):
            raise pytest.UsageError(f"--steer-{name} cannot be combined with --steer-update: a baseline is written only "
                                    f"from the full protocol on every item (drop --steer-{name}, or the ini key "
                                    f"steer_{name}, to accept results)")
    return SteerOptions(
        cache_dir=_path_option(config, "steer_cache_dir", default_cache),
        baseline_dir=_path_option(config, "steer_baseline_dir", config.rootpath / "baselines"),
        update=bool(config.getoption("steer_update")),
        threshold=_float_option(config, "steer_threshold", 0.1),  # type: ignore[arg-type]
        tolerance=_tolerance(config),
        min_recovery=_float_option(config, "steer_min_recovery", None),
        report_path=_resolved(report, "steer_report") if report else None,
        compare_path=_optional_path(config, "steer_compare"),
        compare_fail=_non_negative(config, "steer_compare_fail"),
        rerun=bool(config.getoption("steer_rerun") or config.getini("steer_rerun")),
        quick=quick,
        sequential=sequential,
        html_path=_optional_path(config, "steer_html"),
        group=_choice_option(config, "steer_group", ("case", "model"), "case"),
        regression=_choice_option(config, "steer_regression", ("significant", "tolerance"), "significant"),
        alpha=_alpha(config),
        multiple=_choice_option(config, "steer_multiple", MULTIPLE, "holm"),
        candidates=_candidates(config),
        device=_form_option(config, "steer_device", DEVICE_FORM, DEVICES),
        dtype=_choice_option(config, "steer_dtype", DTYPES, "auto"),
        gpus_per_worker=_count_option(config, "steer_gpus_per_worker"),
        progress_every=_progress_every(config),
    )


def _form_option(config: pytest.Config, key: str, form: re.Pattern[str], expected: tuple[str, ...]) -> str:
    raw, origin = _raw_option(config, key)
    if raw in (None, ""):
        return "auto"
    if not form.match(str(raw)):
        raise pytest.UsageError(f"{origin}: expected one of {', '.join(expected)}, got {raw!r}")
    return str(raw)


def _count_option(config: pytest.Config, key: str) -> int:
    raw, origin = _raw_option(config, key)
    if raw in (None, ""):
        return 1
    if not str(raw).isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"{origin}: expected a whole number of at least 1, got {raw!r}")
    return int(raw)


def _tolerance(config: pytest.Config) -> float | None:
    raw, origin = _raw_option(config, "steer_tolerance")
    value = None if raw == "auto" else _non_negative(config, "steer_tolerance", "'auto' or ")
    if value is not None and value >= 1:  # scores lie in [0, 1]: every drop would pass
        raise pytest.UsageError(f"{origin}: expected 'auto' or a drop in [0, 1), got {raw!r}")
    return value


def _non_negative(config: pytest.Config, key: str, other: str = "") -> float | None:
    """A drop: a number >= 0, or None when not given."""
    raw, origin = _raw_option(config, key)
    value = _float_option(config, key, None)
    if value is not None and value < 0:
        raise pytest.UsageError(f"{origin}: expected {other}a number >= 0 (a drop), got {raw!r}")
    return value


def _progress_every(config: pytest.Config) -> float:
    raw, origin = _raw_option(config, "steer_progress")
    value = _float_option(config, "steer_progress", 30.0)
    if value < 0:  # type: ignore[operator]
        raise pytest.UsageError(f"{origin}: expected seconds >= 0 (0: no progress lines), got {raw!r}")
    return value  # type: ignore[return-value]


def _alpha(config: pytest.Config) -> float:
    alpha = _float_option(config, "steer_alpha", 0.05)
    if not 0.0 < alpha < 1.0:  # type: ignore[operator]
        raise pytest.UsageError(f"--steer-alpha: expected a level between 0 and 1 (exclusive), got {alpha}")
    return alpha  # type: ignore[return-value]


def _candidates(config: pytest.Config) -> dict[str, Candidate]:
    try:
        return parse_candidates(config.getoption("steer_candidate") or [], config.invocation_params.dir)
    except CandidateError as exc:
        raise pytest.UsageError(str(exc)) from None


def _choice_option(config: pytest.Config, key: str, choices: tuple[str, ...], default: str) -> str:
    raw, origin = _raw_option(config, key)
    if raw in (None, ""):
        return default
    if raw not in choices:
        raise pytest.UsageError(f"{origin}: expected one of {', '.join(choices)}, got {raw!r}")
    return str(raw)


def _optional_path(config: pytest.Config, key: str) -> Path | None:
    raw = config.getoption(key) or config.getini(key) or None
    return _resolved(raw, key) if raw else None

"""Turning a method's outcomes into metrics, and metrics into a pass/fail verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from pytest_steer.judge.drift import Drift, drift
from pytest_steer.errors import SteerError
from pytest_steer.record import CaseResult, Comparison, Metrics, Provenance
from pytest_steer.judge.stats import Power, minimum_detectable, paired_bootstrap, paired_test, sure_level


@dataclass(frozen=True)
class Gate:
    """The resolved thresholds for one case (case file values over ini / CLI defaults)."""

    threshold: float
    tolerance: float | None  # None: "auto", the smallest drop the case's test split can detect
    min_recovery: float | None
    gate: str  # "mean": the point estimate of the improvement; "ci_low": its lower bound
    rule: str = "significant"  # a regression: a drop beyond the tolerance that is "significant", or any such drop ("tolerance")
    alpha: float = 0.05  # the run's error rate: family-wise (holm), false discovery (bh) or per comparison (none)
    multiple: str = "none"  # how the run's paired comparisons are corrected: "holm", "bh" or "none"
    comparisons: int = 1  # at most this many paired comparisons in the run (the family)
    max_side_effect: float | None = None  # the largest drop of the control score allowed (None: shown, not gated)

    @property
    def level(self) -> float:
        """The per-comparison level a case can decide alone: a p-value below it is a regression whatever the
        rest of the run finds (alpha / comparisons under a correction)."""
        return sure_level(self.alpha, self.comparisons, self.multiple)

    def significant(self, p_value: float) -> bool:
        return p_value < self.alpha if self.multiple == "none" else p_value <= self.level


@dataclass(frozen=True)
class ScoreChange:
    """One score of this run against the accepted one, on the same test items."""

    score: str  # "steered", "unsteered" or "5-shot"
    before: float
    after: float
    n: int
    difference: float | None = None  # paired mean of after - before; None when the items cannot be paired
    interval: tuple[float, float] | None = None  # its 95% paired bootstrap interval
    test: str = ""  # "mcnemar", "permutation" or "" (not paired)
    p_value: float | None = None
    lost: int = 0  # items that scored lower now
    gained: int = 0
    beyond_tolerance: bool = False
    regression: bool = False  # what the rule decided
    pending: bool = False  # beyond the tolerance, p between the case's sure level and alpha: the run's correction decides

    def describe(self) -> str:
        """'steered 0.412 vs accepted 0.762: -0.350 [-0.46, -0.24], McNemar p=0.0001, 30 lost / 2 gained of 80'."""
        text = f"{self.score} {self.after:.3f} vs accepted {self.before:.3f}"
        if self.difference is None or self.interval is None:
            return text + " (not paired: the test items differ)"
        name = "McNemar" if self.test == "mcnemar" else "sign-flip permutation"
        return (f"{text}: {self.difference:+.3f} [{self.interval[0]:+.3f}, {self.interval[1]:+.3f}], {name} "
                f"p={_p(self.p_value)}, {self.lost} lost / {self.gained} gained of {self.n}")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = None if self.interval is None else list(self.interval)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoreChange:
        interval = data.get("interval")
        return cls(**{**data, "interval": None if interval is None else (float(interval[0]), float(interval[1]))})


@dataclass(frozen=True)
class SideEffectCheck:
    """The control task under the case's steering: its paired drop and whether it fails the case."""

    task: str
    unsteered: float
    steered: float
    drop: float  # unsteered - steered: positive when steering lowered the control score
    interval: tuple[float, float]  # 95% paired bootstrap interval of the drop
    p_value: float
    lost: int
    gained: int
    n: int
    limit: float | None  # max_side_effect (None: not gated)
    failed: bool

    def describe(self) -> str:
        """'general-knowledge 0.812 -> 0.650 under steering: drop 0.162 [0.09, 0.24], p=0.0002, 15 lost / 2 gained of 80'."""
        return (f"{self.task} {self.unsteered:.3f} -> {self.steered:.3f} under steering: drop {self.drop:.3f} "
                f"[{self.interval[0]:.3f}, {self.interval[1]:.3f}], p={_p(self.p_value)}, {self.lost} lost / "
                f"{self.gained} gained of {self.n}")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["interval"] = list(self.interval)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SideEffectCheck:
        return cls(**{**data, "interval": (float(data["interval"][0]), float(data["interval"][1]))})


def side_effect_check(result: CaseResult, gate: Gate) -> SideEffectCheck | None:
    """The control score's paired drop under steering; failed when it exceeds `max_side_effect` and is significant
    (two-sided paired test at the run's level, the drop being in the harmful direction)."""
    s = result.side_effect
    if s is None:
        return None
    before, after = np.asarray(s.unsteered, float), np.asarray(s.steered, float)
    test = paired_test(before, after, seed=result.provenance.seed)
    interval = paired_bootstrap(before, after, seed=result.provenance.seed)
    drop = float(before.mean() - after.mean())
    failed = gate.max_side_effect is not None and drop > gate.max_side_effect + 1e-12 and gate.significant(test.p_value)
    return SideEffectCheck(s.task, float(before.mean()), float(after.mean()), drop, (interval.low, interval.high),
                           test.p_value, test.lost, test.gained, len(s.items), gate.max_side_effect, failed)


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2g}"


BaselineStatus = Literal["ok", "regressed", "mismatch", "updating", "new"]


class BaselineMissing(SteerError):
    """No stored baseline for a case; the message holds the command that creates it."""


@dataclass(frozen=True)
class Verdict:
    """Whether the case passed, every reason why not, and how it compares with its baseline."""

    passed: bool
    reasons: tuple[str, ...] = ()
    baseline: BaselineStatus = "ok"
    stored_steered: float | None = None
    stored_fingerprint: str | None = None
    model_changed: bool = False
    changes: tuple[ScoreChange, ...] = ()  # this run's scores against the accepted ones, paired by item
    notes: tuple[str, ...] = ()  # what is worth saying but fails nothing (a drop within noise)
    power: Power | None = None  # the smallest drop of the gated score this split can detect
    drift: Drift | None = None  # how the chosen setting moved (when the model changed)
    tolerance: float | None = None  # the allowed drop this case was judged with
    auto_tolerance: bool = False  # the tolerance is the smallest drop the split can detect ("auto")
    pending: bool = False  # passed so far; a drop beyond the tolerance awaits the run's correction
    quick: str = ""  # --steer-quick: "replay" (judged by the accepted vector alone), "full[: why]", "" (not asked)
    side_effect: SideEffectCheck | None = None  # the control task under the steering, where the method scores one

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed, "reasons": list(self.reasons), "baseline": self.baseline,
            "stored_steered": self.stored_steered, "stored_fingerprint": self.stored_fingerprint,
            "model_changed": self.model_changed, "changes": [c.to_json() for c in self.changes],
            "notes": list(self.notes), "power": None if self.power is None else asdict(self.power),
            "drift": None if self.drift is None else self.drift.to_json(),
            "tolerance": self.tolerance, "auto_tolerance": self.auto_tolerance, "pending": self.pending,
            "quick": self.quick, "side_effect": None if self.side_effect is None else self.side_effect.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        power, moved = data.get("power"), data.get("drift")
        return cls(
            passed=bool(data["passed"]), reasons=tuple(data["reasons"]), baseline=data["baseline"],
            stored_steered=data.get("stored_steered"), stored_fingerprint=data.get("stored_fingerprint"),
            model_changed=bool(data.get("model_changed")),
            changes=tuple(ScoreChange.from_json(c) for c in data.get("changes", [])), notes=tuple(data.get("notes", [])),
            power=None if power is None else Power(**power), drift=None if moved is None else Drift.from_json(moved),
            tolerance=data.get("tolerance"), auto_tolerance=bool(data.get("auto_tolerance")),
            pending=bool(data.get("pending")), quick=str(data.get("quick") or ""),
            side_effect=None if data.get("side_effect") is None else SideEffectCheck.from_json(data["side_effect"]),
        )


def compare(unsteered: np.ndarray, steered: np.ndarray, seed: int) -> Comparison:
    """Means and the paired bootstrap interval of steered - unsteered."""
    interval = paired_bootstrap(steered, unsteered, seed=seed)
    return Comparison(float(unsteered.mean()), float(steered.mean()), interval.estimate, (interval.low, interval.high),
                      interval.level, int(unsteered.size))


def metrics_from_outcomes(
    unsteered: np.ndarray, steered: np.ndarray, icl: np.ndarray | None, seed: int, metric: str = "accuracy",
    secondary: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> Metrics:
    """The gated comparison, recovery vs the 5-shot ICL score, and each secondary metric's comparison."""
    gated = compare(unsteered, steered, seed)
    icl_score = None if icl is None else float(icl.mean())
    recovery = None
    if icl_score is not None and icl_score > 0:
        recovery = gated.steered / icl_score
    others = {name: compare(u, s, seed) for name, (u, s) in (secondary or {}).items()}
    return Metrics(gated, metric, icl_score, recovery, others)


def judge(result: CaseResult, gate: Gate, stored: CaseResult | None, updating: bool, candidate: bool = False) -> Verdict:
    """(a) improvement >= threshold (and recovery >= minimum); (b) the stored result is comparable
    (same model unless this is a candidate run, same task data, split sizes and seed) and no score
    (steered, unsteered, 5-shot) fell below it: a drop beyond the tolerance that is significant under
    the paired test (`gate.rule == "significant"`), or any drop beyond the tolerance ("tolerance")."""
    auto = gate.tolerance is None
    gate = resolve_tolerance(gate, result)
    metrics = result.metrics
    reasons = gate_reasons(metrics, gate)
    notes: list[str] = []
    status: BaselineStatus = "updating" if updating else ("new" if stored is None else "ok")
    changes: tuple[ScoreChange, ...] = ()
    model_changed = stored is not None and stored.provenance.fingerprint != result.provenance.fingerprint
    if stored is not None:
        other_data = data_mismatch(result.provenance, stored.provenance)  # other items, device or dtype
        changes = () if other_data else score_changes(result, stored, gate)
        # in a candidate run the model is meant to differ: the paired comparison judges it
        mismatch = ([] if candidate else model_mismatch(result.provenance, stored.provenance)) + other_data
        if not updating:
            if mismatch:
                status = "mismatch"
                reasons.extend(mismatch)
            elif any(c.regression for c in changes):
                status = "regressed"
                reasons.extend(_regression_reason(c, gate) for c in changes if c.regression)
            notes.extend(_noise_note(c, gate) for c in changes if c.beyond_tolerance and not c.regression)
    side = side_effect_check(result, gate)
    if side is not None and side.failed:
        reasons.append(f"side effect: {side.describe()}; above max_side_effect {side.limit:.3f}")
    if result.replay is not None:
        r = result.replay
        notes.append(f"stored vector cannot be applied to the new model: {r.error}" if r.error else
                     f"stored vector on the new model: {r.score:.2f} (accepted {r.accepted:.2f})")
    return Verdict(
        passed=not reasons, reasons=tuple(reasons), baseline=status,
        # the accepted score of the items this run scored (all of them unless a sequential run stopped early)
        stored_steered=None if stored is None else next((c.before for c in changes if c.score == "steered"),
                                                         stored.metrics.steered),
        stored_fingerprint=None if stored is None else stored.provenance.fingerprint,
        model_changed=model_changed, changes=changes, notes=tuple(notes),
        power=power(result, stored if changes else None, gate),
        drift=drift(stored, result) if stored is not None and model_changed else None,
        tolerance=gate.tolerance, auto_tolerance=auto,
        pending=not updating and not reasons and any(c.pending for c in changes), side_effect=side,
    )


def score_changes(result: CaseResult, stored: CaseResult, gate: Gate) -> tuple[ScoreChange, ...]:
    """Steered, unsteered and 5-shot scores against the accepted ones: paired by item where the items match."""
    now, then = result.outcomes, stored.outcomes
    out = []
    for name, after, before, a_items, b_items in (
        ("steered", result.metrics.steered, stored.metrics.steered, now.steered, then.steered),
        ("unsteered", result.metrics.unsteered, stored.metrics.unsteered, now.unsteered, then.unsteered),
        ("5-shot", result.metrics.icl, stored.metrics.icl, now.icl, then.icl),
    ):
        if after is None or before is None:
            continue
        then_items = then.items
        part = _part(now.items, then.items, b_items)
        if part is not None:  # a sequential run stopped early: the accepted outcomes of the same items
            b_items, then_items, before = part, now.items, float(np.mean(part))
        beyond = after < before - gate.tolerance - 1e-12
        if not _pairable(now.items, then_items, a_items, b_items):  # nothing to pair: only the plain tolerance rule can judge
            out.append(ScoreChange(name, before, after, result.metrics.n_test, beyond_tolerance=beyond, regression=beyond))
            continue
        test = paired_test(b_items, a_items, seed=result.provenance.seed)
        interval = paired_bootstrap(a_items, b_items, seed=result.provenance.seed)
        regression = beyond and (gate.rule == "tolerance" or gate.significant(test.p_value))
        # between the level one case can decide alone and alpha, only the whole run's p-values decide
        pending = beyond and not regression and gate.multiple != "none" and test.p_value <= gate.alpha
        out.append(ScoreChange(
            name, before, after, len(a_items), interval.estimate, (interval.low, interval.high), test.test,
            test.p_value, test.lost, test.gained, beyond, regression, pending,
        ))
    return tuple(out)


def power(result: CaseResult, accepted: CaseResult | None, gate: Gate) -> Power:
    """The smallest drop of the gated score this test split detects at `gate.alpha` with power 0.8.

    The spread of the paired differences is the one this run saw against the accepted result on the
    same items (none when nothing changed, leaving only the exact floor of a paired test on n items)."""
    steered = np.asarray(result.outcomes.steered, dtype=float)
    binary = bool(np.isin(steered, (0, 1)).all())
    sd = 0.0
    if accepted is not None and steered.size > 1:
        then = accepted.outcomes
        before = _part(result.outcomes.items, then.items, then.steered) or (
            then.steered if _pairable(result.outcomes.items, then.items, result.outcomes.steered, then.steered) else None)
        if before is not None:
            sd = float(np.std(steered - np.asarray(before, dtype=float), ddof=1))
    return minimum_detectable(max(design_items(result), 1), sd, gate.tolerance or 0.0, binary=binary, alpha=gate.level)


SCORES_PER_CASE = 3  # steered, unsteered and 5-shot: the most paired comparisons one case adds to the run


def comparisons(cases: int) -> int:
    """The family a run's correction may have to cover: every selected case's scores."""
    return max(1, SCORES_PER_CASE * cases)


def case_tolerance(case: float | str | None, run: float | None) -> float | None:
    """A case file's tolerance over the run's; None for "auto"."""
    if case is None:
        return run
    return None if case == "auto" else float(case)


def resolve_tolerance(gate: Gate, result: CaseResult) -> Gate:
    """`gate` with an "auto" tolerance (None) replaced by the smallest drop the case's test split can detect at the
    run's per-comparison level: the exact McNemar floor for 0/1 outcomes (a drop of fewer items can never be
    significant), for graded ones the normal approximation with the spread of the case's own per-item scores.
    It depends on the design (items, level, outcome type), never on how far this run moved."""
    if gate.tolerance is not None:
        return gate
    # exact: rounded down, it would fall below what the split can detect
    return replace(gate, tolerance=auto_tolerance(np.asarray(result.outcomes.steered, dtype=float), design_items(result),
                                                  gate.level))


def auto_tolerance(steered: np.ndarray, n: int, level: float) -> float:
    """The smallest drop a design of `n` items detects at `level` (power 0.8), for outcomes like `steered`."""
    binary = bool(np.isin(steered, (0, 1)).all())
    sd = 0.0 if binary or steered.size < 2 else float(np.std(steered, ddof=1))
    return minimum_detectable(max(n, 1), sd, 0.0, binary=binary, alpha=level).detectable



def _part(items: tuple[str, ...], other_items: tuple[str, ...], other: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """The accepted outcomes of this run's items when they are a proper part of the accepted items (a sequential
    run that stopped early), in this run's order; None otherwise."""
    if other is None or not items or len(items) >= len(other_items) or len(other) != len(other_items):
        return None
    where = {item: k for k, item in enumerate(other_items)}
    if len(where) != len(other_items) or any(item not in where for item in items):
        return None
    return tuple(other[where[item]] for item in items)


def design_items(result: CaseResult) -> int:
    """The test items the case's design has: all of them unless a sequential run stopped early."""
    scored = len(result.outcomes.steered)
    sequential = result.diagnostics.get("sequential")
    of = sequential.get("of") if isinstance(sequential, dict) else None
    return of if isinstance(of, int) and of >= scored else scored


def _pairable(items: tuple[str, ...], other_items: tuple[str, ...], outcomes: tuple[float, ...] | None,
              other: tuple[float, ...] | None) -> bool:
    """Two outcome vectors of the same test items, one per item: they can be compared item by item."""
    return items == other_items and outcomes is not None and other is not None and len(outcomes) == len(other) > 0


def _regression_reason(c: ScoreChange, gate: Gate) -> str:
    rule = "" if c.test == "" or gate.rule == "tolerance" else f", significant at {_level(gate)}"
    return (f"regression: {c.score} {c.after:.3f} is below the stored baseline {c.before:.3f} minus tolerance "
            f"{gate.tolerance:.3f}{rule}" + ("" if c.test == "" else f" ({c.describe()})"))


def _noise_note(c: ScoreChange, gate: Gate) -> str:
    return (f"{c.score} fell {c.before - c.after:.3f} below the accepted {c.before:.3f}, beyond the tolerance "
            f"{gate.tolerance:.3f} but " + (f"p={_p(c.p_value)} is above the level one case decides alone "
            f"({gate.level:.2g}): the run's {gate.multiple} correction over its comparisons rules on it; " if c.pending
            else f"within noise (p={_p(c.p_value)}, not significant at {_level(gate)}): not a regression; ")
            + c.describe())


def _level(gate: Gate) -> str:
    if gate.multiple == "none":
        return f"alpha {gate.alpha:g}"
    return f"{gate.level:.2g} (alpha {gate.alpha:g} / {gate.comparisons} comparisons, {gate.multiple})"


def gate_reasons(metrics: Metrics, gate: Gate) -> list[str]:
    reasons: list[str] = []
    improvement = metrics.delta if gate.gate == "mean" else metrics.delta_ci[0]
    label = "improvement" if gate.gate == "mean" else "lower CI bound of the improvement"
    if improvement < gate.threshold - 1e-12:
        reasons.append(
            f"{label} {improvement:+.3f} (steered {metrics.steered:.3f} - unsteered "
            f"{metrics.unsteered:.3f}) is below the threshold {gate.threshold:+.3f}"
        )
    if gate.min_recovery is not None:
        recovery = metrics.recovery
        if recovery is None or recovery < gate.min_recovery - 1e-12:
            shown = "n/a (ICL accuracy is 0)" if recovery is None else f"{recovery:.3f}"
            reasons.append(f"recovery steered/ICL {shown} is below the minimum {gate.min_recovery:.3f}")
    return reasons


def provenance_mismatch(run: Provenance, stored: Provenance) -> list[str]:
    """Why a stored result cannot be compared with this run (empty when it can)."""
    return model_mismatch(run, stored) + data_mismatch(run, stored)


def model_mismatch(run: Provenance, stored: Provenance) -> list[str]:
    """The model changed (on the same device type and dtype: the fingerprint holds both)."""
    if (run.device, run.dtype) != (stored.device, stored.dtype) or run.fingerprint == stored.fingerprint:
        return []
    return [f"model changed: {stored.fingerprint} -> {run.fingerprint}; the stored baseline was accepted for "
            "another model: accept this one with --steer-update"]


def data_mismatch(run: Provenance, stored: Provenance) -> list[str]:
    """Why this run's scores are not of the stored result's items, device or dtype (empty when they are)."""
    out = []
    if (run.device, run.dtype) != (stored.device, stored.dtype):
        out.append(f"device or dtype changed: the baseline was computed on {stored.device}/{stored.dtype}, this run on "
                   f"{run.device}/{run.dtype}; scores of another dtype or device are not compared: keep a baseline "
                   "directory per device (--steer-baseline-dir) or accept this run's with --steer-update")
    if run.task_data.sha256 != stored.task_data.sha256:
        out.append(f"task data changed: {stored.task_data.sha256[:12]} -> {run.task_data.sha256[:12]} "
                   f"({run.task_data.source}); refresh the baseline with --steer-update")
    if run.counts != stored.counts or run.seed != stored.seed:
        out.append(f"split changed: stored {_split(stored)}, this run {_split(run)}; the items differ, so the scores "
                   "cannot be compared: refresh the baseline with --steer-update")
    return out


def _split(p: Provenance) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(p.counts.items())) + f", seed={p.seed}"

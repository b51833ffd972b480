"""Settings of the built-in methods: torch-free, so collecting case files stays light."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pytest_steer.cases.settings import SettingsError
from pytest_steer.tasks.data import Task, TaskError, require_kind

MIN_DEMOS = 10  # the smallest demonstration pool a word-pair split leaves


def _check_pool(task: Task, method: str, n_dev: int, n_test: int, shots: dict[str, int], where: str) -> None:
    """The demonstration pool (items - dev - test) must hold every prompt's shots plus its query."""
    require_kind(task, ("pairs",), method)
    pool = len(task.items) - n_dev - n_test
    for name, n in shots.items():
        need = max(MIN_DEMOS, n + 1)
        if pool < need:
            raise TaskError(
                f"{task.source} has {len(task.items)} items, but n_dev = {n_dev}, n_test = {n_test} and the {need} "
                f"demonstrations that {method}.{name} = {n} needs make {n_dev + n_test + need}"
            )

BUCKETS = {"lower": (0.0, 0.5), "upper": (0.5, 1.0), "full": (0.0, 1.0),
           "q1": (0.0, 0.25), "q2": (0.25, 0.5), "q3": (0.5, 0.75), "q4": (0.75, 1.0)}


def _at_least_one(obj: object, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise SettingsError(f"{where}.{name}: must be at least 1")


def _layers(layers: tuple[int, ...] | None, where: str) -> None:
    if layers is not None and (not layers or min(layers) < 0):
        raise SettingsError(f"{where}.layers: expected a non-empty list of layer indices >= 0")


@dataclass(frozen=True)
class TaskVectorSettings:
    """Knobs of the task-vector method (defaults: ours, for small models on CPU)."""

    n_prompts: int = 30
    n_shots: int = 5
    layers: tuple[int, ...] | None = None  # None: every block; never a stride by default
    batch_size: int = 32
    max_rows: int = 256  # rows (prompt x intervention) per last-token pass
    reuse_prefix: bool = True  # encode the prompt minus its last token once (same numbers, less work)

    def validate(self, where: str) -> None:
        _at_least_one(self, ("n_prompts", "n_shots", "batch_size", "max_rows"), where)
        _layers(self.layers, where)

    @property
    def icl_shots(self) -> int:
        return self.n_shots

    def check_task(self, task: Task, n_dev: int, n_test: int, where: str) -> None:
        _check_pool(task, "task_vector", n_dev, n_test, {"n_shots": self.n_shots}, where)


@dataclass(frozen=True)
class FunctionVectorSettings:
    """Knobs of the function-vector method; the grid defaults follow the study's range."""

    n_mean_prompts: int = 25
    n_cie_prompts: int = 25
    n_shots: int = 10
    icl_shots: int = 5
    heads: tuple[int, ...] = (2, 4, 8, 16, 32)  # capped at L x H
    strengths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    layers: tuple[int, ...] | None = None  # None: every block
    cie: Literal["exact", "attribution"] = "exact"
    batch_size: int = 16
    max_rows: int = 256
    reuse_prefix: bool = True

    def validate(self, where: str) -> None:
        _at_least_one(self, ("n_mean_prompts", "n_cie_prompts", "n_shots", "icl_shots", "batch_size", "max_rows"), where)
        if not self.heads or min(self.heads) < 1:
            raise SettingsError(f"{where}.heads: expected a non-empty list of positive head counts")
        if not self.strengths:
            raise SettingsError(f"{where}.strengths: expected a non-empty list of numbers")
        _layers(self.layers, where)

    def check_task(self, task: Task, n_dev: int, n_test: int, where: str) -> None:
        _check_pool(task, "function_vector", n_dev, n_test, {"n_shots": self.n_shots, "icl_shots": self.icl_shots}, where)


@dataclass(frozen=True)
class DolaSettings:
    """DoLa's knobs; `metric` None means MC1 for multiple-choice tasks, accuracy for completions."""

    bucket: str | tuple[int, ...] = "lower"
    post_softmax: bool = True
    alpha: float = 0.1  # the plausibility mask's "relative top"; 0: no mask
    premature_norm: bool = False  # the paper's choice: no norm on premature layers
    metric: Literal["mc1", "mc2", "mc3", "accuracy"] | None = None
    # how the premature layer is picked: "original", the original code's (KL(M||q_N) + KL(M||q_j)) / 2, as the
    # reliability study ran it; "jsd", the paper's Jensen-Shannon divergence (saturates at log 2 on near one-hot layers)
    divergence: Literal["original", "jsd"] = "original"
    # candidates whose divergence is within this fraction of the largest tie; the earliest layer of them is contrasted
    tie_tolerance: float = 1e-3

    def validate(self, where: str) -> None:
        if isinstance(self.bucket, str) and self.bucket not in BUCKETS:
            raise SettingsError(f"{where}.bucket: expected one of {', '.join(BUCKETS)} or a list of layers, got {self.bucket!r}")
        if not isinstance(self.bucket, str) and (not self.bucket or min(self.bucket) < 0):
            raise SettingsError(f"{where}.bucket: a list of layers must be non-empty and hold layer indices >= 0")
        if not 0 <= self.alpha <= 1:
            raise SettingsError(f"{where}.alpha: must be in [0, 1] (0: no plausibility mask), got {self.alpha}")
        if not 0 <= self.tie_tolerance < 1:
            raise SettingsError(f"{where}.tie_tolerance: must be in [0, 1) (a fraction of the largest divergence), "
                                f"got {self.tie_tolerance}")

    def check_task(self, task: Task, n_dev: int, n_test: int, where: str) -> None:
        require_kind(task, ("mc", "completion"), "dola")
        if n_test > len(task.items):
            raise TaskError(f"{task.source}: task '{task.name}' has {len(task.items)} items but n_test = {n_test}")

    def bucket_name(self) -> str:
        return self.bucket if isinstance(self.bucket, str) else "layers " + ",".join(map(str, self.bucket))


def _check_choices(task: Task, method: str, n_dev: int, n_test: int, n_train: int) -> None:
    require_kind(task, ("ab",), method)
    need = n_dev + n_test + n_train
    if len(task.items) < need:
        raise TaskError(f"{task.source} has {len(task.items)} items, but n_dev = {n_dev}, n_test = {n_test} and "
                        f"{method}.n_train = {n_train} make {need}")


@dataclass(frozen=True)
class CaaSettings:
    """Knobs of contrastive activation addition: the vector is built from `n_train` questions, the layer and
    multiplier are chosen on dev (every block by default), the opposite sign is reported on test."""

    n_train: int = 100
    multipliers: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    layers: tuple[int, ...] | None = None
    batch_size: int = 16
    max_rows: int = 256

    def validate(self, where: str) -> None:
        _at_least_one(self, ("n_train", "batch_size", "max_rows"), where)
        if not self.multipliers or min(self.multipliers) <= 0:
            raise SettingsError(f"{where}.multipliers: expected a non-empty list of positive numbers (the opposite "
                                f"sign is always reported), got {list(self.multipliers)}")
        _layers(self.layers, where)

    def check_task(self, task: Task, n_dev: int, n_test: int, where: str) -> None:
        _check_choices(task, "caa", n_dev, n_test, self.n_train)


@dataclass(frozen=True)
class VectorSettings:
    """A steering vector you bring: its file (GGUF control vector, safetensors; `.pt` only with `allow_pickle`),
    the block of a file holding one vector without layers, and the strengths tried on dev."""

    vector: str = ""
    layer: int | None = None  # for a file holding a single vector and no layer names
    strengths: tuple[float, ...] = (1.0,)
    allow_pickle: bool = False  # a `.pt` file runs code when read: refused unless you trust it
    batch_size: int = 16
    max_rows: int = 256

    def validate(self, where: str) -> None:
        if not self.vector:
            raise SettingsError(f"{where}.vector: name the vector file (a .gguf control vector or .safetensors)")
        _at_least_one(self, ("batch_size", "max_rows"), where)
        if not self.strengths or any(s == 0 for s in self.strengths):
            raise SettingsError(f"{where}.strengths: expected a non-empty list of non-zero numbers, "
                                f"got {list(self.strengths)}")
        if self.layer is not None and self.layer < 0:
            raise SettingsError(f"{where}.layer: expected a block index >= 0, got {self.layer}")

    def check_task(self, task: Task, n_dev: int, n_test: int, where: str) -> None:
        _check_choices(task, "byo", n_dev, n_test, 0)

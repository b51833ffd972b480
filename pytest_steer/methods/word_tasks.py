"""What task vectors and function vectors share: prompts, targets and the unsteered/ICL baselines."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pytest_steer.methods.base import TaskInput
from pytest_steer.methods.scoring import (
    Intervene,
    TokenCounter,
    first_target_ids,
    score_variants,
)
from pytest_steer.models.loader import ModelHandle
from pytest_steer.tasks import (
    Pair,
    Splits,
    few_shot_prompt,
    load_task,
    split_task,
    target_text,
    zero_shot_prompt,
)


def prepare_word_task(name: str, path: Path, n_dev: int, n_test: int, seed: int) -> TaskInput:
    """Load a word-pair task and cut it into demonstrations, dev and test."""
    task = load_task(name, path)
    splits = split_task(task, n_dev, n_test, seed)
    counts = {"demos": len(splits.demos), "dev": len(splits.dev), "test": len(splits.test)}
    return TaskInput(task, splits, task.source, task.data_hash(), len(task.pairs), counts)


@dataclass(frozen=True)
class ScoringSettings:
    """How prompts are batched (never changes a number beyond float precision)."""

    batch_size: int
    max_rows: int
    reuse_prefix: bool


@dataclass
class PromptSet:
    """Prompts with the first token of each target, as fed to the model."""

    prompts: list[str]
    targets: list[int]

    @classmethod
    def build(cls, handle: ModelHandle, prompts: list[str], pairs: tuple[Pair, ...] | list[Pair]) -> PromptSet:
        return cls(prompts, first_target_ids(handle.tokenizer, prompts, [target_text(p) for p in pairs]))

    @classmethod
    def zero_shot(cls, handle: ModelHandle, pairs: tuple[Pair, ...]) -> PromptSet:
        return cls.build(handle, [zero_shot_prompt(p.input) for p in pairs], pairs)


def icl_prompts(demos: tuple[Pair, ...], queries: tuple[Pair, ...] | list[Pair], n_shots: int, rng: random.Random) -> list[str]:
    """One few-shot prompt per query, demonstrations drawn from the pool (never the query)."""
    prompts = []
    for query in queries:
        pool = [d for d in demos if d.input != query.input]
        prompts.append(few_shot_prompt(rng.sample(pool, n_shots), query.input))
    return prompts


def score(
    handle: ModelHandle, data: PromptSet, n_variants: int, intervene: Intervene | None,
    scoring: ScoringSettings, counter: TokenCounter,
) -> np.ndarray:
    """Per-item correctness (n_items, n_variants) of the target's first token."""
    result = score_variants(
        handle, data.prompts, data.targets, n_variants, intervene, batch_size=scoring.batch_size,
        max_rows=scoring.max_rows, counter=counter, reuse_prefix=scoring.reuse_prefix,
    )
    return result.correct(data.targets)


@dataclass
class Baselines:
    """Unsteered (zero-shot) outcomes on dev and test and the few-shot ICL ceiling on test."""

    unsteered_dev: np.ndarray
    unsteered_test: np.ndarray
    icl_test: np.ndarray


def unsteered_baselines(
    handle: ModelHandle, splits: Splits, dev: PromptSet, test: PromptSet, icl_shots: int,
    scoring: ScoringSettings, counter: TokenCounter,
) -> Baselines:
    icl = PromptSet.build(handle, icl_prompts(splits.demos, splits.test, icl_shots, random.Random(f"icl-{splits.seed}")), splits.test)
    return Baselines(
        unsteered_dev=score(handle, dev, 1, None, scoring, counter)[:, 0],
        unsteered_test=score(handle, test, 1, None, scoring, counter)[:, 0],
        icl_test=score(handle, icl, 1, None, scoring, counter)[:, 0],
    )

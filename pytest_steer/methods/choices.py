"""Two-choice scoring shared by the behaviour methods (CAA, your own vectors) and the side-effect control.

A two-choice question is shown with its answers as `A.` and `B.` (the matching one first on every other item)
and read at `Answer:`: the item's outcome is 1 when the model puts more weight on the matching letter than on
the other (the gated, exact outcome), and its `mass` is the matching letter's share of the two letters'
probability (graded, reported).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pytest_steer.methods.hooks import Intervene
from pytest_steer.methods.scoring import TokenCounter, first_target_ids, score_interventions
from pytest_steer.models.loader import ModelHandle
from pytest_steer.tasks import Choice
from pytest_steer.tasks.prompts import choice_prompts, letter_text


@dataclass(frozen=True)
class ChoiceSet:
    """Prompts of two-choice questions, the letter token ids after each, and which letter matches."""

    items: tuple[Choice, ...]
    prompts: list[str]
    letters: list[tuple[int, int]]  # per prompt: the ids of " A" and " B" as they follow it
    matching: np.ndarray  # per prompt: 0 (A matches) or 1 (B)

    @classmethod
    def build(cls, handle: ModelHandle, items: Sequence[Choice]) -> ChoiceSet:
        prompts, matching = choice_prompts(items)
        a = first_target_ids(handle.tokenizer, prompts, [letter_text(0)] * len(prompts))
        b = first_target_ids(handle.tokenizer, prompts, [letter_text(1)] * len(prompts))
        same = next((p for p, x, y in zip(prompts, a, b) if x == y), None)
        if same is not None:
            raise ValueError(f"the tokenizer gives the letters A and B one token after {same[-40:]!r}")
        return cls(tuple(items), prompts, list(zip(a, b)), np.array(matching))

    def texts(self) -> list[str]:
        return [item.question for item in self.items]


@dataclass(frozen=True)
class ChoiceScores:
    """Per item and intervention: the 0/1 outcome (matching letter preferred) and the matching letter's mass."""

    chose: np.ndarray  # (n_items, n_interventions) 0/1
    mass: np.ndarray  # (n_items, n_interventions) in [0, 1]

    def column(self, k: int) -> ChoiceScores:
        return ChoiceScores(self.chose[:, k], self.mass[:, k])


def score_choices(
    handle: ModelHandle, data: ChoiceSet, n_interventions: int, intervene: Intervene | None, counter: TokenCounter, *,
    batch_size: int, max_rows: int, last_token_only: bool, unchanged_blocks: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChoiceScores:
    """Score every question under every intervention. `last_token_only`: the interventions edit the last
    position alone (the prompt minus it is encoded once); otherwise whole prompts run per intervention."""
    scores = score_interventions(
        handle, data.prompts, [pair[0] for pair in data.letters], n_interventions, intervene, batch_size=batch_size,
        max_rows=max_rows, counter=counter, reuse_prefix=last_token_only, unchanged_blocks=unchanged_blocks,
        logprobs=False, progress=progress, choice_ids=data.letters,
    )
    assert scores.choice_logits is not None
    logits = scores.choice_logits.to(torch.float64)  # (n, k, 2): the two letters' logits, float32 from the model
    rows = torch.arange(len(data.prompts))
    matching = torch.from_numpy(data.matching).long()
    match, other = logits[rows, :, matching], logits[rows, :, 1 - matching]
    chose = (match > other).to(torch.float64).numpy()
    mass = torch.sigmoid(match - other).numpy()
    return ChoiceScores(chose, mass)

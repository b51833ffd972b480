"""Bring your own vector: a control vector from a file, gated on a two-choice behaviour task.

The file's vectors (`storage.vector_file`: GGUF control vectors, safetensors, opted-in `.pt`) are added,
`strength x vector`, to their blocks' outputs at every position, as llama.cpp applies a control vector. The
strength is chosen on dev among the case's `strengths` (the most matching choices, then mass, the first on a
tie); on test: unsteered, steered and the opposite strength (`opposite`), as for CAA.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pytest_steer.methods.base import MethodOutcome, Phases, RunContext
from pytest_steer.methods.choices import ChoiceScores, ChoiceSet, score_choices
from pytest_steer.methods.control import control_outcome
from pytest_steer.methods.hooks import HookReport, Intervene, adds_everywhere
from pytest_steer.methods.scoring import TokenCounter
from pytest_steer.methods.settings import VectorSettings
from pytest_steer.models.loader import ModelHandle
from pytest_steer.storage.files import file_sha256
from pytest_steer.storage.vector_file import check_fits, read_vectors
from pytest_steer.tasks import ChoiceSplits, Task, split_choices


def adds_file(handle: ModelHandle, strengths: list[float], vectors: dict[int, torch.Tensor],
              reports: dict[int, HookReport]) -> Intervene:
    """Intervention k adds `strengths[k]` times the file's vectors at every position of their blocks."""
    return adds_everywhere(lambda l: handle.adapter.block(handle.model, l), vectors,
                           torch.tensor(strengths, dtype=torch.float32), reports)


class VectorMethod:
    """A vector file applied at its own layers, its strength chosen on dev."""

    name = "byo"
    side_effects = True
    settings_type = VectorSettings

    def prepare(self, task: Task, n_dev: int, n_test: int, seed: int) -> tuple[ChoiceSplits, dict[str, int]]:
        splits = split_choices(task, n_dev, n_test, seed)
        return splits, {"dev": len(splits.dev), "test": len(splits.test)}

    def _score(self, handle: ModelHandle, data: ChoiceSet, strengths: list[float], vectors: dict[int, torch.Tensor],
               settings: VectorSettings, counter: TokenCounter) -> ChoiceScores:
        reports: dict[int, HookReport] = {}
        scores = score_choices(handle, data, len(strengths), adds_file(handle, strengths, vectors, reports), counter,
                               batch_size=settings.batch_size, max_rows=settings.max_rows, last_token_only=False)
        silent = [l for l in vectors if not reports.get(l, HookReport()).fired_and_changed]
        if silent:
            raise RuntimeError(f"steering hooks on blocks {silent} did not fire or changed nothing")
        return scores

    def run(self, handle: ModelHandle, task: Task, splits: ChoiceSplits, settings: VectorSettings,
            context: RunContext) -> MethodOutcome:
        counter, clock = TokenCounter(), Phases()
        path = Path(settings.vector)
        vectors = read_vectors(path, settings.layer, settings.allow_pickle)
        check_fits(path, vectors, handle.adapter.hidden_size, handle.adapter.num_layers)
        clock.lap("read")
        dev, test = ChoiceSet.build(handle, splits.dev), ChoiceSet.build(handle, splits.test)
        strengths = list(settings.strengths)
        context.report(f"byo: dev search over {len(strengths)} strengths", 0, 1)
        found = self._score(handle, dev, strengths, vectors, settings, counter)
        dev_chose, dev_mass = found.chose.mean(axis=0), found.mass.mean(axis=0)
        best = strengths[max(range(len(strengths)), key=lambda k: (dev_chose[k], dev_mass[k], -k))]
        context.report(f"byo: dev search over {len(strengths)} strengths", 1, 1)
        clock.lap("dev_search")
        unsteered = score_choices(handle, test, 1, None, counter, batch_size=settings.batch_size,
                                  max_rows=settings.max_rows, last_token_only=True).column(0)
        both = self._score(handle, test, [best, -best], vectors, settings, counter)
        steered, opposite = both.column(0), both.column(1)
        clock.lap("test")
        control = control_outcome(handle, context, adds_file, [best], vectors, settings, counter,
                                  last_token_only=False)
        clock.lap("control")
        return MethodOutcome(
            unsteered=unsteered.chose, steered=steered.chose, icl=None,
            chosen={"strength": best, "layers": list(vectors)},
            curves={"strengths": strengths, "dev_accuracy": [float(x) for x in dev_chose]},
            vectors={}, vector_metadata={},
            diagnostics={"vector_sha256": file_sha256(path),
                         "dev_mass": [round(float(x), 6) for x in dev_mass],
                         "norms": {str(l): round(float(v.norm()), 4) for l, v in vectors.items()},
                         "forward_tokens": counter.tokens, "forward_passes": counter.passes},
            test_items=test.texts(),
            secondary={"mass": (unsteered.mass, steered.mass), "opposite": (unsteered.chose, opposite.chose)},
            phases=clock.seconds, control=control,
        )

"""Task data in one place: item records and readers (`data`), prompt templates (`prompts`),
and the built-in task files (`builtin/`, shipped in the wheel)."""

from pytest_steer.tasks.data import (
    BUILTIN_DIR, Choice, ChoiceSplits, Completion, MCQuestion, Pair, Splits, Task, TaskError, load_task, require_kind,
    sample_items, split_choices, split_task,
)

__all__ = [
    "BUILTIN_DIR", "Choice", "ChoiceSplits", "Completion", "MCQuestion", "Pair", "Splits", "Task", "TaskError", "load_task",
    "require_kind", "sample_items", "split_choices", "split_task",
]

"""Registry of steering methods by the name used in case files and markers."""

from __future__ import annotations

from pytest_steer.methods.base import Method
from pytest_steer.methods.dola_method import DolaMethod
from pytest_steer.methods.function_vector import FunctionVectorMethod
from pytest_steer.methods.task_vector import TaskVectorMethod

METHODS: dict[str, Method] = {m.name: m for m in (TaskVectorMethod(), FunctionVectorMethod(), DolaMethod())}

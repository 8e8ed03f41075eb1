"""Executors: where and how the items of a schedule run. They move tensors, never do the math."""

from .base import ExecutionResult, Executor, TimelineEntry
from .local import LocalExecutor

__all__ = ["ExecutionResult", "Executor", "LocalExecutor", "TimelineEntry"]

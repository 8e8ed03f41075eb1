"""Executors: where and how the items of a schedule run. They move tensors, never do the math."""

from .base import BlockFn, CommEntry, ExecutionResult, Executor, TimelineEntry
from .local import LocalExecutor

__all__ = ["BlockFn", "CommEntry", "ExecutionResult", "Executor", "LocalExecutor", "TimelineEntry"]

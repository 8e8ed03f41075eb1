"""Executors: where and how the items of a schedule run. They move tensors, never do the math.

The names below are imported when first used, so that ``backend.fork_server`` can be imported
(and the pool's fork server started) before torch is.
"""

from importlib import import_module

_EXPORTS = {"BlockFn": "base", "CommEntry": "base", "ExecutionResult": "base", "Executor": "base",
            "TimelineEntry": "base", "LocalExecutor": "local"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)

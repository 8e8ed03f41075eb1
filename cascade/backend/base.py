"""What every executor returns, and the checks they share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from ..schedule import Schedule, Step


@dataclass(frozen=True)
class TimelineEntry:
    """One item as it ran: which worker, and when (seconds since the run started)."""

    block: int
    step: Step
    worker: int
    start: float
    end: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExecutionResult:
    latents: list[torch.Tensor]  # the final x0 of every block, in block order
    timeline: list[TimelineEntry]
    model_calls: int


class Executor(Protocol):
    name: str
    workers: int

    def execute(self, job, schedule: Schedule, progress=None) -> ExecutionResult: ...


def report_progress(progress, tick: int, schedule: Schedule) -> None:
    if progress is not None:
        progress((tick + 1) / schedule.num_ticks, f"tick {tick + 1}/{schedule.num_ticks}")

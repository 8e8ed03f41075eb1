"""What every executor returns, and what they share: progress and the in-order hand-off of blocks."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol

import torch

from ..schedule import Schedule, Step

# on_block(block, latent [1, C, F, H, W] on the CPU, seconds since the run started)
BlockFn = Callable[[int, torch.Tensor, float], None]


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


@dataclass(frozen=True)
class CommEntry:
    """One worker's traffic of one tick, on the run's clock (seconds since it started).

    The blocks placement (K/V between ticks): ``posted``: its items of the tick were done and it
    posted the tick's K/V; ``blocked_s``: how long its items of this tick waited for K/V still on
    their way (transfer time on the critical path, plus any wait for a slower owner).
    The tokens placement (Q/K/V inside each forward): ``posted``: the tick's end; ``blocked_s``:
    the seconds its collectives took inside the tick's forwards (waits for slower peers included).
    ``sent_bytes`` is the payload this worker sent (its data the other workers receive),
    ``received_bytes`` theirs that it received.
    """

    tick: int
    worker: int
    posted: float
    blocked_s: float
    sent_bytes: int
    received_bytes: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ExecutionResult:
    latents: list[torch.Tensor]  # the final x0 of every block, in block order
    timeline: list[TimelineEntry]
    model_calls: int
    communication: list[CommEntry] = field(default_factory=list)  # per tick and worker; empty on one device
    session_reports: list[dict] = field(default_factory=list)  # what each worker's job session reported


class Executor(Protocol):
    name: str
    workers: int

    def execute(self, job, schedule: Schedule, progress=None, on_block: BlockFn | None = None) -> ExecutionResult: ...


def report_progress(progress, tick: int, schedule: Schedule) -> None:
    if progress is not None:
        progress((tick + 1) / schedule.num_ticks, f"tick {tick + 1}/{schedule.num_ticks}")


class BlockHandOff:
    """Hands each finished block to ``on_block`` in block order, stamped with ``clock()``.

    On a pool a block can arrive before a lower one that another worker finished earlier but
    reported later; it waits here until every lower block has been handed on."""

    def __init__(self, on_block: BlockFn | None, clock: Callable[[], float]):
        self.on_block = on_block
        self.clock = clock
        self.waiting: dict[int, torch.Tensor] = {}
        self.next_block = 0

    def finished(self, block: int, latent: torch.Tensor) -> None:
        if self.on_block is None:
            return
        self.waiting[block] = latent
        while self.next_block in self.waiting:
            self.on_block(self.next_block, self.waiting.pop(self.next_block).cpu(), self.clock())
            self.next_block += 1

    def flush(self, latents: list[torch.Tensor]) -> None:
        """Hand on, from the run's result, every block not handed on yet."""
        for block in range(self.next_block, len(latents)):
            self.finished(block, latents[block])

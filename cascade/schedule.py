"""Work items and the schedules that order them into ticks (pure Python, no torch).

A work item is one forward of one video block: ``(block, step)`` for step in ``0..T-1``, plus
optionally ``(block, "recache")``, the extra forward of the clean block at timestep 0 that only
rewrites its K/V. The last block has no recache: its K/V are never read, so that forward would
only make every schedule one item longer. A schedule groups all items into ticks; the items of
one tick are independent and may run in parallel. The serial pipeline and Block Cascading are
the same items in a different order, so everything downstream (pipeline, executors, timelines)
is written once against a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Union

RECACHE = "recache"

Step = Union[int, str]


class WorkItem(NamedTuple):
    """One forward of one video block: a denoising step index, or ``"recache"``."""

    block: int
    step: Step

    @property
    def is_recache(self) -> bool:
        return self.step == RECACHE


@dataclass(frozen=True)
class Schedule:
    """All work items of a video, grouped into ticks of mutually independent items."""

    num_blocks: int
    num_steps: int
    window: int
    stride: int
    recache: bool
    ticks: tuple[tuple[WorkItem, ...], ...]

    @property
    def num_ticks(self) -> int:
        return len(self.ticks)

    @property
    def num_items(self) -> int:
        return sum(len(tick) for tick in self.ticks)

    @property
    def max_parallel(self) -> int:
        return max(len(tick) for tick in self.ticks)

    def block_items(self, block: int) -> list[WorkItem]:
        """The items of one block in the order a block must run them."""
        steps: list[Step] = list(range(self.num_steps))
        if _has_recache(block, self.num_blocks, self.recache):
            steps.append(RECACHE)
        return [WorkItem(block, step) for step in steps]

    def is_final(self, item: WorkItem) -> bool:
        """Whether ``item`` is its block's last denoising step: the block's x0 is final after it
        (a recache that may follow only rewrites K/V)."""
        return item.step == self.num_steps - 1

    def as_lists(self) -> list[list[tuple[int, Step]]]:
        """JSON-friendly form: a list of ticks, each a list of ``[block, step]``."""
        return [[(item.block, item.step) for item in tick] for tick in self.ticks]


def make_schedule(
    num_blocks: int,
    num_steps: int,
    window: int = 1,
    stride: int | None = None,
    recache: bool = True,
) -> Schedule:
    """Order every item of a ``num_blocks``-block video into ticks.

    Block ``b`` starts in the first tick after block ``b-1`` has completed ``stride`` of its items,
    provided fewer than ``window`` blocks are in flight; every block in flight runs its next item
    in each tick. ``window=1`` (or ``stride`` equal to the items per block, the default) is the
    serial pipeline: one item per tick, each block after its predecessor is clean.
    """
    items_per_block = num_steps + int(recache)
    stride = items_per_block if stride is None else stride
    _check_arguments(num_blocks, num_steps, window, stride, items_per_block)

    done = [0] * num_blocks
    next_block = 0
    in_flight: list[int] = []
    ticks: list[tuple[WorkItem, ...]] = []
    while next_block < num_blocks or in_flight:
        if next_block < num_blocks and len(in_flight) < window:
            if next_block == 0 or done[next_block - 1] >= stride:
                in_flight.append(next_block)
                next_block += 1
        tick = []
        for block in in_flight:
            step: Step = done[block] if done[block] < num_steps else RECACHE
            tick.append(WorkItem(block, step))
        for item in tick:
            done[item.block] += 1
        in_flight = [b for b in in_flight if done[b] < num_steps + _has_recache(b, num_blocks, recache)]
        ticks.append(tuple(tick))
    return Schedule(num_blocks, num_steps, window, stride, recache, tuple(ticks))


def _has_recache(block: int, num_blocks: int, recache: bool) -> bool:
    return recache and block < num_blocks - 1


def _check_arguments(num_blocks: int, num_steps: int, window: int, stride: int, items_per_block: int) -> None:
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    if not 1 <= stride <= items_per_block:
        raise ValueError(
            f"stride must be between 1 and the items per block ({items_per_block}), got {stride}"
        )


def serial_schedule(num_blocks: int, num_steps: int, recache: bool = True) -> Schedule:
    return make_schedule(num_blocks, num_steps, window=1, recache=recache)


def ideal_speedup(serial: Schedule, cascade: Schedule) -> float:
    """What a perfect backend would gain: the ratio of critical paths in ticks."""
    return serial.num_ticks / cascade.num_ticks

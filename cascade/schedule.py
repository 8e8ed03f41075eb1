"""Work items and the schedules that order them into ticks (pure Python, no torch).

A work item is one forward of one video block: ``(block, step)`` for step in ``0..T-1``, plus
optionally ``(block, "recache")``, the extra forward of the clean block at timestep 0 that only
rewrites its K/V. The last block has no recache: its K/V are never read, so that forward would
only make every schedule one item longer. A schedule groups all items into ticks; the items of
one tick are independent and may run in parallel. The serial pipeline and Block Cascading are
the same items in a different order, so everything downstream (pipeline, executors, timelines)
is written once against a schedule.

A prompt schedule switches the prompt at block boundaries (``parse_prompt_schedule``). A serial
schedule then re-encodes recent blocks under the new prompt before the switch block starts, as
LongLive does: ``(block j, "switch@k")`` is clean block ``j`` at timestep 0 rewriting its K/V under
the prompt that starts at block ``k``; the blocks of one switch share one tick and one forward
(LongLive's switch pass). A cascade needs no such items
(``Schedule.item_prompts`` says which prompt every item runs under).

A joint schedule (the blocks in flight of a tick share one forward) gives a tick's recache item a
tick of its own, right before the tick's denoising items: a cache pass is its own forward and
attends only to committed context, and the next window sees the clean K/V it wrote, as in
Rolling Forcing's loop (``pipeline/rolling_forcing_inference.py``: after each window's forward,
a separate ``updating_cache`` forward of the window's first block at t = 0).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence, Union

RECACHE = "recache"
SWITCH = "switch@"  # step name prefix of a switch recache: "switch@4" serves the prompt that starts at block 4

Step = Union[int, str]


class WorkItem(NamedTuple):
    """One forward of one video block: a denoising step index, or ``"recache"``."""

    block: int
    step: Step

    @property
    def is_recache(self) -> bool:
        return self.step == RECACHE

    @property
    def is_denoising(self) -> bool:
        """A denoising step (its output is the block's next latent); other items only rewrite K/V."""
        return isinstance(self.step, int)

    @property
    def switch(self) -> int | None:
        """For a switch recache, the block whose prompt it re-encodes this block under; else None."""
        if isinstance(self.step, str) and self.step.startswith(SWITCH):
            return int(self.step[len(SWITCH):])
        return None


def is_switch_pass(tick: Sequence[WorkItem]) -> bool:
    """Whether ``tick`` is a switch pass: the switch recaches of several blocks, which LongLive
    re-encodes in one forward."""
    return len(tick) > 1 and all(item.switch is not None for item in tick)


def switch_step(block: int) -> str:
    """The step name of a switch recache for the prompt that starts at ``block``."""
    return f"{SWITCH}{block}"


@dataclass(frozen=True)
class Schedule:
    """All work items of a video, grouped into ticks of mutually independent items."""

    num_blocks: int
    num_steps: int
    window: int
    stride: int
    recache: bool
    ticks: tuple[tuple[WorkItem, ...], ...]
    joint: bool = False

    @property
    def num_ticks(self) -> int:
        return len(self.ticks)

    @property
    def num_items(self) -> int:
        return sum(len(tick) for tick in self.ticks)

    @property
    def max_parallel(self) -> int:
        return max(len(tick) for tick in self.ticks)

    @property
    def has_one_forward_ticks(self) -> bool:
        """Whether some tick runs as one forward of consecutive blocks attending to each other both
        ways: every tick of a joint schedule, or a serial schedule's switch pass."""
        return self.joint or any(is_switch_pass(tick) for tick in self.ticks)

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

    def switch_items(self, block: int) -> list[WorkItem]:
        """The switch recache forwards that serve the prompt starting at ``block``, in order."""
        return [item for tick in self.ticks for item in tick if item.switch == block]

    def switch_tick(self, block: int) -> int:
        """The moment of the switch to the prompt that starts at ``block``: the tick of its first
        item, which is its first switch recache (serial) or else the tick in which ``block`` runs
        its first step."""
        for index, tick in enumerate(self.ticks):
            if any(item.switch == block or (item.block == block and item.step == 0) for item in tick):
                return index
        raise ValueError(f"block {block} is not in this {self.num_blocks}-block schedule")

    def item_prompts(self, switch_blocks: Sequence[int]) -> dict[WorkItem, int]:
        """Which prompt each item runs under when prompts switch at ``switch_blocks`` (sorted, after
        block 0): prompt i + 1 from the i-th switch's moment (``switch_tick``) on. Items left out
        run under prompt 0 (with no switches: all of them).

        Every item of the switch's tick and of later ticks, of any block, runs under the new
        prompt: in a cascade the blocks still in flight take it from their next step, and a
        serial schedule's switch recaches run under it. The prompt is thus a function of the tick,
        so the items of one tick (one batched or joint forward) always share one prompt, and
        every executor computes the same thing.
        """
        moments = [self.switch_tick(block) for block in switch_blocks]
        prompts = {}
        for index, tick in enumerate(self.ticks):
            prompt = bisect_right(moments, index)
            if prompt:
                prompts.update((item, prompt) for item in tick)
        return prompts


def make_schedule(
    num_blocks: int,
    num_steps: int,
    window: int = 1,
    stride: int | None = None,
    recache: bool = True,
    switch_recache: Mapping[int, Sequence[int]] | None = None,
    joint: bool = False,
) -> Schedule:
    """Order every item of a ``num_blocks``-block video into ticks.

    Block ``b`` starts in the first tick after block ``b-1`` has completed ``stride`` of its items,
    provided fewer than ``window`` blocks are in flight; every block in flight runs its next item
    in each tick. ``window=1`` (or ``stride`` equal to the items per block, the default) is the
    serial pipeline: one item per tick, each block after its predecessor is clean.

    ``switch_recache``: switch block k -> the consecutive earlier blocks re-encoded under k's prompt
    just before k starts, all in one tick (serial only: window 1).

    ``joint``: for the joint variant, whose ticks are one forward each: a tick that holds a
    recache item beside denoising steps becomes two, the recache first (``_cache_passes_first``).
    """
    items_per_block = num_steps + int(recache)
    stride = items_per_block if stride is None else stride
    _check_arguments(num_blocks, num_steps, window, stride, items_per_block)
    plan = _check_switch_recache(switch_recache or {}, num_blocks, window)

    done = [0] * num_blocks
    next_block = 0
    in_flight: list[int] = []
    ticks: list[tuple[WorkItem, ...]] = []
    while next_block < num_blocks or in_flight:
        if next_block < num_blocks and len(in_flight) < window:
            if next_block == 0 or done[next_block - 1] >= stride:
                if plan.get(next_block):
                    ticks.append(tuple(WorkItem(b, switch_step(next_block)) for b in plan[next_block]))
                in_flight.append(next_block)
                next_block += 1
        tick = []
        for block in in_flight:
            step: Step = done[block] if done[block] < num_steps else RECACHE
            tick.append(WorkItem(block, step))
        for item in tick:
            done[item.block] += 1
        in_flight = [b for b in in_flight if done[b] < num_steps + _has_recache(b, num_blocks, recache)]
        ticks.extend(_cache_passes_first(tick) if joint else [tuple(tick)])
    return Schedule(num_blocks, num_steps, window, stride, recache, tuple(ticks), joint)


def _cache_passes_first(tick: list[WorkItem]) -> list[tuple[WorkItem, ...]]:
    """A joint tick as the forwards it is: its cache passes, then its denoising steps."""
    passes = tuple(item for item in tick if not item.is_denoising)
    steps = tuple(item for item in tick if item.is_denoising)
    return [part for part in (passes, steps) if part]


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


def _check_switch_recache(plan: Mapping[int, Sequence[int]], num_blocks: int, window: int) -> dict:
    if plan and window != 1:
        raise ValueError("switch recache forwards are for serial schedules (window 1); a cascade switches "
                         "prompts without them")
    for switch, blocks in plan.items():
        if not 0 < switch < num_blocks:
            raise ValueError(f"a switch recache must serve a block in 1..{num_blocks - 1}, got {switch}")
        consecutive = not blocks or list(blocks) == list(range(blocks[0], blocks[0] + len(blocks)))
        if not consecutive or any(not 0 <= b < switch for b in blocks):
            raise ValueError(f"the blocks recached for the switch at block {switch} must be consecutive earlier "
                             f"blocks in order, got {list(blocks)}")
    return {switch: tuple(blocks) for switch, blocks in plan.items()}


def serial_schedule(num_blocks: int, num_steps: int, recache: bool = True) -> Schedule:
    return make_schedule(num_blocks, num_steps, window=1, recache=recache)


# --- prompt schedules ---------------------------------------------------------------------

PromptSchedule = tuple[tuple[int, str], ...]


def parse_prompt_schedule(text: str) -> PromptSchedule:
    """A prompt schedule from its text form: ``block: prompt`` entries separated by ``;`` or new
    lines, e.g. ``"0:a red circle moving right;4:a blue circle moving right"`` (blank entries are
    skipped). ValueError, one line, for malformed text or a schedule ``check_prompt_schedule``
    refuses."""
    entries = []
    for part in re.split(r"[;\n]", text):
        if not part.strip():
            continue
        block, colon, prompt = part.partition(":")
        if not colon or not block.strip().isdigit():
            raise ValueError(f"a prompt schedule entry reads 'block: prompt', got {part.strip()!r}")
        entries.append((int(block), prompt.strip()))
    return check_prompt_schedule(entries)


def check_prompt_schedule(entries, num_blocks: int | None = None) -> PromptSchedule:
    """``entries`` ((block, prompt) pairs) as a prompt schedule, or ValueError with one line: it must
    start at block 0, its blocks must increase (and be below ``num_blocks`` when given), and no
    prompt may be empty."""
    schedule = []
    for entry in entries:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise ValueError(f"a prompt schedule entry is a (block, prompt) pair, got {entry!r}")
        block, prompt = entry
        if isinstance(block, bool) or not isinstance(block, int) or not isinstance(prompt, str):
            raise ValueError(f"a prompt schedule entry is a (block, prompt) pair, got {entry!r}")
        if not prompt.strip():
            raise ValueError(f"the prompt for block {block} is empty")
        schedule.append((block, prompt))
    if not schedule:
        raise ValueError("the prompt schedule is empty")
    if schedule[0][0] != 0:
        raise ValueError(f"the prompt schedule must start at block 0, got {schedule[0][0]}")
    for (before, _), (block, _) in zip(schedule, schedule[1:]):
        if block == before:
            raise ValueError(f"block {block} appears twice in the prompt schedule")
        if block < before:
            raise ValueError(f"the prompt schedule's blocks must increase: block {block} comes after block {before}")
    if num_blocks is not None and schedule[-1][0] >= num_blocks:
        raise ValueError(f"the prompt schedule switches at block {schedule[-1][0]}, but the video has "
                         f"{num_blocks} blocks (0..{num_blocks - 1})")
    return tuple(schedule)

"""Executors on one device: items one by one, or each tick as one batched forward."""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from ..schedule import Schedule
from .base import BlockFn, BlockHandOff, ExecutionResult, TimelineEntry, report_progress


@contextmanager
def torch_threads(threads: int | None):
    """Run with ``threads`` intra-op threads (None: leave torch's setting alone)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalExecutor:
    """Runs a schedule on one device.

    ``batched=False`` runs the items of a tick one after another (the tick's context rule still
    holds: their K/V are committed only when the tick ends). ``batched=True`` runs each tick as
    one forward, its items as rows; a joint job always runs a tick as one forward.
    """

    workers = 1

    def __init__(self, device: str | torch.device = "cpu", batched: bool = False, threads: int | None = None):
        self.device = torch.device(device)
        self.batched = batched
        self.threads = threads
        self.name = "batched" if batched else "local"

    def execute(self, job, schedule: Schedule, progress=None, on_block: BlockFn | None = None) -> ExecutionResult:
        """Run every item of ``schedule``; ``on_block`` gets each block as soon as it is final."""
        with torch_threads(self.threads):
            cache = job.new_cache(self.device)
            with job.session(cache) as report:
                result = self._execute(job, schedule, cache, progress, on_block)
        result.session_reports = [report]
        return result

    def _execute(self, job, schedule: Schedule, cache, progress, on_block) -> ExecutionResult:
        current = {}
        timeline: list[TimelineEntry] = []
        calls = 0
        self._synchronize()
        t0 = time.perf_counter()
        blocks = BlockHandOff(on_block, lambda: time.perf_counter() - t0)
        for tick_index, tick in enumerate(schedule.ticks):
            for item in tick:
                if item.block not in current:
                    current[item.block] = job.initial_latent(item.block, self.device)
            groups = [tick] if (self.batched or job.one_forward(tick)) else [(item,) for item in tick]
            for group in groups:
                start = time.perf_counter() - t0
                outputs = job.run(group, [current[i.block] for i in group], cache)
                self._synchronize()
                end = time.perf_counter() - t0
                calls += 1
                for item, out in zip(group, outputs):
                    current[item.block] = out
                    timeline.append(TimelineEntry(item.block, item.step, 0, start, end))
                for item in group:
                    if schedule.is_final(item):
                        blocks.finished(item.block, current[item.block])
            cache.commit()
            report_progress(progress, tick_index, schedule)
        latents = [current[b] for b in range(schedule.num_blocks)]
        return ExecutionResult(latents=latents, timeline=timeline, model_calls=calls)

    def _synchronize(self) -> None:
        # CUDA kernels run asynchronously: job.run returns once its work is queued. Waiting for
        # the GPU here makes the timeline record when each forward really finished (and keeps
        # earlier queued work out of the first one); on the CPU there is nothing to wait for.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

"""The measured cost of one forward of ``n`` video blocks on a device.

A one-device plan's bound prices each tick at what one forward of its items costs there: rows of
a batch (the batched executor) or consecutive blocks in one forward (the joint variant). Batching
gains only what the device leaves idle at batch 1, so these costs are measured, never assumed.
The service measures each size once, the first time a plan needs it, and keeps it
(``ForwardCosts``); ``python -m cascade bench`` reports the same curve as its bound (b).
"""

from __future__ import annotations

import statistics
import time

import torch

from .backend.local import torch_threads

CONTEXT_BLOCKS = 3  # committed blocks of context every timed forward attends to, as mid-video


class ForwardTimer:
    """Times forwards of ``blocks`` video blocks that see ``CONTEXT_BLOCKS`` committed blocks:
    ``blocks`` rows of one block each, or with ``joint`` one row of ``blocks`` consecutive blocks."""

    def __init__(self, model, blocks: int, joint: bool = False):
        lay = model.layout
        self.transformer = model.transformer
        rows, frames = (1, blocks * lay.frames_per_block) if joint else (blocks, lay.frames_per_block)
        context = CONTEXT_BLOCKS * lay.frames_per_block
        self.cache = model.transformer.new_kv_cache(context + frames, lay.height, lay.width)
        for f in range(context):
            self.cache.filled[f] = True
        dtype = next(model.transformer.parameters()).dtype
        device = next(model.transformer.parameters()).device
        self.x = torch.randn(rows, lay.channels, frames, lay.height, lay.width, device=device, dtype=dtype)
        self.text, _ = model.encode_text(["a red circle"])
        self.t = torch.full((rows, frames) if joint else (rows,), 500.0, device=device)
        self.starts = [context] * rows
        self.seconds(2)  # warm-up: first calls allocate

    @torch.no_grad()
    def seconds(self, forwards: int) -> float:
        """Mean seconds per forward over ``forwards`` forwards."""
        started = time.perf_counter()
        for _ in range(forwards):
            self.transformer(self.x, self.t, self.text, kv_cache=self.cache, start_frame=self.starts)
            self.cache.discard_staged()
        if self.x.device.type == "cuda":
            torch.cuda.synchronize(self.x.device)
        return (time.perf_counter() - started) / forwards


class ForwardCosts:
    """Seconds of one forward of ``n`` blocks on ``model``'s device with ``threads`` threads,
    measured on first use and kept: ``costs(n, joint)``. Each size is the median of ``rounds``
    rounds of ``forwards`` forwards."""

    def __init__(self, model, threads: int | None, rounds: int = 3, forwards: int = 3):
        self.model, self.threads, self.rounds, self.forwards = model, threads, rounds, forwards
        self.measured: dict[tuple[int, bool], float] = {}

    def __call__(self, blocks: int, joint: bool = False) -> float:
        key = (blocks, joint and blocks > 1)  # one block is one forward either way
        if key not in self.measured:
            with torch_threads(self.threads):
                timer = ForwardTimer(self.model, *key)
                self.measured[key] = statistics.median(timer.seconds(self.forwards) for _ in range(self.rounds))
        return self.measured[key]

    def as_dict(self) -> dict:
        """What was measured, for stats: {"batched" | "joint": {n: ms}}."""
        out: dict = {}
        for (blocks, joint), seconds in sorted(self.measured.items()):
            out.setdefault("joint" if joint else "batched", {})[blocks] = seconds * 1e3
        return out

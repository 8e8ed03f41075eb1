"""One block-causal pipeline for every schedule and every executor.

``DenoiseJob`` is the math of one video: how an item's input becomes its output (a forward of
the transformer, x0, re-noising) and what noise each item uses. It knows nothing of devices or
of how items are spread over workers. An executor (``cascade.backend``) walks a schedule tick by
tick, runs the job's items where it likes and keeps the context rule: every item of tick τ sees
the K/V that earlier blocks had at the end of tick τ−1. ``BlockCausalPipeline`` joins a model,
a schedule and an executor into frames and a timeline.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .caching import BWCacheConfig, apply_bw_cache, bw_cache_stats, merge_bw_cache_stats, remove_bw_cache
from .model.kv_cache import KVCache
from .model.presets import LatentLayout
from .sampling import FlowMatchSampler, item_noise
from .schedule import Schedule, WorkItem

ProgressFn = Callable[[float, str], None]
# on_block(block, frames uint8 [T, H, W, 3], seconds since the run started when they were ready)
FramesFn = Callable[[int, np.ndarray, float], None]


@dataclass
class DenoiseJob:
    """The device-free math of denoising one video block by block.

    ``joint``: the items of one call are consecutive blocks denoised in a single forward with
    bidirectional attention among them (the paper's Figure 2 variant): a different computation,
    not a different executor, so only executors that run a whole tick in one call accept it.
    ``bwcache``: BWCache's settings for this run; they travel with the job, so whichever
    transformer runs it (this process's model or a pool worker's replica) gets the hooks for the
    run (``session``).
    """

    transformer: torch.nn.Module
    text: torch.Tensor
    sampler: FlowMatchSampler
    layout: LatentLayout
    num_blocks: int
    seed: int
    joint: bool = False
    local_window: int | None = None
    sink_frames: int = 0
    request_id: str = "run"
    bwcache: BWCacheConfig | None = None
    _text_on: dict = field(default_factory=dict, repr=False)

    @contextmanager
    def session(self):
        """What a run needs on its transformer: BWCache's hooks, applied for the run and removed
        after. Yields a dict that holds what they did once the run ends (``{"bwcache": stats}``;
        empty without the cache). Executors enter it once per run on each transformer they use."""
        report: dict = {}
        if self.bwcache is None:
            yield report
            return
        apply_bw_cache(self.transformer, self.bwcache)
        try:
            yield report
            report["bwcache"] = bw_cache_stats(self.transformer, self.request_id)
        finally:
            remove_bw_cache(self.transformer)

    def new_cache(self, device, reuse: KVCache | None = None) -> KVCache:
        """An empty KV cache for this video; ``reuse``: an earlier run's, taken if it fits."""
        lay = self.layout
        return self.transformer.new_kv_cache(
            self.num_blocks * lay.frames_per_block, lay.height, lay.width,
            local_window=self.local_window, sink_frames=self.sink_frames, device=device, reuse=reuse,
        )

    def initial_latent(self, block: int, device) -> torch.Tensor:
        return item_noise(self.seed, block, 0, self.layout.block_shape(), device=device, dtype=self._dtype())

    def text_on(self, device) -> torch.Tensor:
        """The prompt embedding on ``device``, one tensor per device so the cross cache can key on it."""
        key = str(torch.device(device))
        if key not in self._text_on:
            self._text_on[key] = self.text.to(device=device, dtype=self._dtype())
        return self._text_on[key]

    def _dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @torch.no_grad()
    def run(self, items: Sequence[WorkItem], inputs: Sequence[torch.Tensor], cache: KVCache) -> list[torch.Tensor]:
        """One forward for ``items`` (rows of a batch, or one joint row); returns their outputs.

        A step's output is the next step's input (x0 re-noised to the next level), or x0 after
        the last step. A recache item's output is its input: it only stages clean K/V.
        """
        if self.joint:
            outputs = self._forward_joint(items, inputs, cache)
        else:
            outputs = self._forward_rows(items, inputs, cache)
        return [self._advance(item, x, out) for item, x, out in zip(items, inputs, outputs)]

    def row_key(self, item: WorkItem) -> tuple:
        """Who a forward row is, for hooks with per-block state: (request, block, step)."""
        return (self.request_id, item.block, item.step)

    def _timestep(self, item: WorkItem) -> float:
        return 0.0 if item.is_recache else self.sampler.model_timesteps[item.step]

    def _start_frame(self, item: WorkItem) -> int:
        return item.block * self.layout.frames_per_block

    def _forward_rows(self, items, inputs, cache) -> list[torch.Tensor]:
        x = torch.cat(list(inputs))
        t = torch.tensor([self._timestep(i) for i in items], device=x.device)
        starts = [self._start_frame(i) for i in items]
        out = self.transformer(x, t, self.text_on(x.device), kv_cache=cache, start_frame=starts,
                               row_keys=[self.row_key(i) for i in items]).sample
        return list(out.split(1))

    def _forward_joint(self, items, inputs, cache) -> list[torch.Tensor]:
        blocks = [i.block for i in items]
        if blocks != list(range(blocks[0], blocks[0] + len(blocks))):
            raise ValueError(f"a joint forward needs consecutive blocks, got {blocks}")
        x = torch.cat(list(inputs), dim=2)
        per_frame = [self._timestep(i) for i in items for _ in range(self.layout.frames_per_block)]
        t = torch.tensor([per_frame], device=x.device)
        key = (self.request_id, tuple(i.block for i in items), tuple(i.step for i in items))
        out = self.transformer(x, t, self.text_on(x.device), kv_cache=cache, start_frame=self._start_frame(items[0]),
                               row_keys=[key]).sample
        return list(out.split(self.layout.frames_per_block, dim=2))

    def _advance(self, item: WorkItem, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if item.is_recache:
            return x
        x0 = self.sampler.predict_x0(x, output, item.step)
        if item.step == self.sampler.num_steps - 1:
            return x0
        def fresh_noise() -> torch.Tensor:
            return item_noise(self.seed, item.block, item.step + 1, tuple(x0.shape), device=x0.device, dtype=x0.dtype)

        return self.sampler.next_input(x, x0, item.step, fresh_noise)


@dataclass
class PipelineOutput:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    latents: torch.Tensor  # [1, C, F, H, W] on the CPU
    schedule: Schedule
    timeline: list
    model_calls: int
    executor: str
    workers: int
    unknown_words: list[str]
    text_s: float
    decode_s: float
    shown_s: list[float]  # per block: when its decoded frames were ready, on the run's clock
    block_frames: list[int]  # per block: how many frames it decoded to
    communication: list = field(default_factory=list)  # per tick and worker, from distributed executors
    bwcache: dict | None = None  # what BWCache did, merged over every worker; None without it


class BlockDecoding:
    """Decodes each block as the executor hands it on, in block order, and passes its frames on.

    A block's frames are ready when the executor handed the block on plus the time decoding it
    took: that is when a viewer could first see them (``shown_s``)."""

    def __init__(self, model, on_block: FramesFn | None):
        self.decode = model.block_decoder()
        self.on_block = on_block
        self.frames: list[np.ndarray] = []
        self.shown_s: list[float] = []
        self.decode_s = 0.0

    def __call__(self, block: int, latent: torch.Tensor, t: float) -> None:
        started = time.perf_counter()
        frames = self.decode(latent)
        took = time.perf_counter() - started
        self.decode_s += took
        self.frames.append(frames)
        self.shown_s.append(t + took)
        if self.on_block is not None:
            self.on_block(block, frames, t + took)

    def finish(self, latents: list[torch.Tensor], end: float) -> np.ndarray:
        """Decode the blocks the executor did not hand on (a torchrun rank hands on none)."""
        for block in range(len(self.frames), len(latents)):
            self(block, latents[block].cpu(), end)
        return np.concatenate(self.frames)


class BlockCausalPipeline:
    """Runs one prompt through a block-causal model under any schedule on any executor."""

    def __init__(self, model):
        self.model = model

    def __call__(
        self,
        prompt: str,
        schedule: Schedule,
        executor,
        seed: int = 0,
        joint: bool = False,
        progress: ProgressFn | None = None,
        request_id: str = "run",
        bwcache: BWCacheConfig | None = None,
        on_block: FramesFn | None = None,
    ) -> PipelineOutput:
        """``on_block(block, frames, t)`` gets each block's decoded frames as soon as the block is
        final, in block order; the frames of all blocks together equal decoding the whole video."""
        sampler = self.model.sampler
        if schedule.num_steps != sampler.num_steps:
            sampler = sampler.with_steps(schedule.num_steps)
        started = time.perf_counter()
        text, unknown = self.model.encode_text([prompt])
        text_s = time.perf_counter() - started
        job = DenoiseJob(
            transformer=self.model.transformer, text=text, sampler=sampler, layout=self.model.layout,
            num_blocks=schedule.num_blocks, seed=seed, joint=joint,
            local_window=self.model.local_window, sink_frames=self.model.sink_frames, request_id=request_id,
            bwcache=bwcache,
        )
        decoding = BlockDecoding(self.model, on_block)
        result = executor.execute(job, schedule, progress=progress, on_block=decoding)
        end = max(entry.end for entry in result.timeline)
        frames = decoding.finish(result.latents, end)
        reports = [r["bwcache"] for r in result.session_reports if "bwcache" in r]
        return PipelineOutput(
            frames=frames, latents=torch.cat([x.cpu() for x in result.latents], dim=2), schedule=schedule,
            timeline=result.timeline, model_calls=result.model_calls, executor=executor.name,
            workers=executor.workers, unknown_words=unknown[0], text_s=text_s, decode_s=decoding.decode_s,
            shown_s=decoding.shown_s, block_frames=[len(f) for f in decoding.frames], communication=result.communication,
            bwcache=merge_bw_cache_stats(reports) if reports else None,
        )

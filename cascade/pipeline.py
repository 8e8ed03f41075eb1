"""One block-causal pipeline for every schedule and every executor.

``DenoiseJob`` is the math of one video: how an item's input becomes its output (a forward of
the transformer, x0, re-noising) and what noise each item uses. It knows nothing of devices or
of how items are spread over workers. An executor (``cascade.backend``) walks a schedule tick by
tick, runs the job's items where it likes and keeps the context rule: every item of tick τ sees
the K/V that earlier blocks had at the end of tick τ−1. ``BlockCausalPipeline`` joins a model,
a schedule and an executor into frames and a timeline.

A prompt schedule (prompts switching at block boundaries) is decided here once per run: the job
carries every prompt's embedding and which prompt each work item runs under
(``Schedule.item_prompts``), so no executor chooses anything and all compute the same video.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .caching import BWCacheConfig, apply_bw_cache, bw_cache_stats, merge_bw_cache_stats, remove_bw_cache
from .model.context_parallel import TokenParallel
from .model.kv_cache import KVCache, window_frames
from .model.presets import LatentLayout
from .sampling import FlowMatchSampler, item_noise
from .schedule import PromptSchedule, Schedule, WorkItem, check_prompt_schedule, is_switch_pass

ProgressFn = Callable[[float, str], None]
# on_block(block, frames uint8 [T, H, W, 3], seconds since the run started when they were ready)
FramesFn = Callable[[int, np.ndarray, float], None]


@dataclass
class DenoiseJob:
    """The device-free math of denoising one video block by block.

    ``joint``: the items of one call are consecutive blocks denoised in a single forward with
    bidirectional attention among them (the paper's Figure 2 variant): a different computation,
    not a different executor, so only executors that run a whole tick in one call accept it. A
    joint forward holds denoising steps or cache passes, never both (``make_schedule(joint=True)``
    gives cache passes ticks of their own). A switch pass (a tick of switch recaches) is one
    forward in every job (``one_forward``).
    ``rolling_anchor``: the cache's sinks move with the window and cache passes see only the
    most recent frames (Rolling Forcing; ``KVCache``).
    ``bwcache``: BWCache's settings for this run; they travel with the job, so whichever
    transformer runs it (this process's model or a pool worker's replica) gets the hooks for the
    run (``session``).
    ``text``: the prompt embeddings [P, L, D], one row per prompt of the run's prompt schedule;
    ``prompts``: the prompt (row of ``text``) of every item that does not run under the first.
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
    rolling_anchor: bool = False
    request_id: str = "run"
    bwcache: BWCacheConfig | None = None
    prompts: dict[WorkItem, int] = field(default_factory=dict)
    _text_on: dict = field(default_factory=dict, repr=False)

    @contextmanager
    def session(self, cache: KVCache, tokens: TokenParallel | None = None):
        """What a run needs on its transformer: BWCache's hooks and, with ``tokens``, token
        parallelism (``token_parallel``), applied for the run and removed after. Yields a dict
        that holds what the run did once it ends: ``cross_attention_builds`` (how often this worker
        built its cross-attention cache in ``cache``, the run's KV cache: once per prompt it ran
        items under) and, with BWCache, ``bwcache``. Executors enter it once per run on each
        transformer they use."""
        report: dict = {}
        # token parallelism's hooks wrap BWCache's: BWCache sees (and caches) this process's tokens
        with self._bw_cache(report), (tokens.applied(self.transformer) if tokens is not None else nullcontext()):
            yield report
            report["cross_attention_builds"] = cache.text_builds

    def token_parallel(self, device, reuse: TokenParallel | None = None,
                       ulysses_backend: str | None = None) -> TokenParallel:
        """This process's part in running every item on all processes of the initialised
        torch.distributed group, each on its share of every frame's tokens (the pool's ``tokens``
        placement); collective. ``reuse``: an earlier run's, whose device mesh is kept;
        ``ulysses_backend``: the torch.distributed backend Ulysses' exchanges take (default: the group's)."""
        lay = self.layout
        return TokenParallel(self.transformer, self.transformer.tokens_per_frame(lay.height, lay.width),
                             torch.device(device), reuse=reuse, ulysses_backend=ulysses_backend)

    @contextmanager
    def _bw_cache(self, report: dict):
        if self.bwcache is None:
            yield
            return
        apply_bw_cache(self.transformer, self.bwcache)
        try:
            yield
            report["bwcache"] = bw_cache_stats(self.transformer, self.request_id)
        finally:
            remove_bw_cache(self.transformer)

    def new_cache(self, device, reuse: KVCache | None = None, tokens: TokenParallel | None = None) -> KVCache:
        """An empty KV cache for this video; ``reuse``: an earlier run's, taken if it fits;
        ``tokens``: this process's share of it under token parallelism."""
        lay = self.layout
        return self.transformer.new_kv_cache(
            self.num_blocks * lay.frames_per_block, lay.height, lay.width,
            local_window=self.local_window, sink_frames=self.sink_frames, device=device, reuse=reuse,
            rolling_anchor=self.rolling_anchor,
            shard=tokens.cache_shard() if tokens is not None else None,
        )

    def initial_latent(self, block: int, device) -> torch.Tensor:
        return item_noise(self.seed, block, 0, self.layout.block_shape(), device=device, dtype=self._dtype())

    def text_on(self, device, prompt: int = 0) -> torch.Tensor:
        """A prompt's embedding on ``device``, one tensor per device and prompt: the cross-attention
        cache keys on the tensor, so it is rebuilt exactly when the prompt changes."""
        key = (str(torch.device(device)), prompt)
        if key not in self._text_on:
            self._text_on[key] = self.text[prompt:prompt + 1].to(device=device, dtype=self._dtype())
        return self._text_on[key]

    def _text_for(self, items: Sequence[WorkItem], device) -> torch.Tensor:
        chosen = {self.prompts.get(item, 0) for item in items}
        if len(chosen) > 1:
            raise ValueError(f"the items of one forward run under one prompt, got prompts {sorted(chosen)}")
        return self.text_on(device, chosen.pop())

    def _dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def one_forward(self, items: Sequence[WorkItem]) -> bool:
        """Whether ``items`` (a tick) run as one forward of consecutive blocks attending to each
        other both ways: a joint job's tick, or a switch pass, whatever the job."""
        return self.joint or is_switch_pass(items)

    @torch.no_grad()
    def run(self, items: Sequence[WorkItem], inputs: Sequence[torch.Tensor], cache: KVCache) -> list[torch.Tensor]:
        """One forward for ``items`` (rows of a batch, or one joint row); returns their outputs.

        A step's output is the next step's input (x0 re-noised to the next level), or x0 after
        the last step. A recache item's (and a switch recache's) output is its input: it only
        stages clean K/V.
        """
        text = self._text_for(items, inputs[0].device)
        if self.one_forward(items):
            outputs = self._forward_joint(items, inputs, cache, text)
        else:
            outputs = self._forward_rows(items, inputs, cache, text)
        return [self._advance(item, x, out) for item, x, out in zip(items, inputs, outputs)]

    def row_key(self, item: WorkItem) -> tuple:
        """Who a forward row is, for hooks with per-block state: (request, block, step)."""
        return (self.request_id, item.block, item.step)

    def _timestep(self, item: WorkItem) -> float:
        return self.sampler.model_timesteps[item.step] if item.is_denoising else 0.0

    def _start_frame(self, item: WorkItem) -> int:
        return item.block * self.layout.frames_per_block

    def _forward_rows(self, items, inputs, cache, text) -> list[torch.Tensor]:
        x = torch.cat(list(inputs))
        t = torch.tensor([self._timestep(i) for i in items], device=x.device)
        starts = [self._start_frame(i) for i in items]
        out = self.transformer(x, t, text, kv_cache=cache, start_frame=starts,
                               row_keys=[self.row_key(i) for i in items],
                               cache_pass=[not i.is_denoising for i in items]).sample
        return list(out.split(1))

    def _forward_joint(self, items, inputs, cache, text) -> list[torch.Tensor]:
        blocks = [i.block for i in items]
        if blocks != list(range(blocks[0], blocks[0] + len(blocks))):
            raise ValueError(f"a joint forward needs consecutive blocks, got {blocks}")
        cache_pass = not items[0].is_denoising
        if any(i.is_denoising == cache_pass for i in items):
            raise ValueError(f"a joint forward holds denoising steps or cache passes, not both, got {list(items)}: "
                             "make its schedule with make_schedule(..., joint=True)")
        x = torch.cat(list(inputs), dim=2)
        per_frame = [self._timestep(i) for i in items for _ in range(self.layout.frames_per_block)]
        t = torch.tensor([per_frame], device=x.device)
        key = (self.request_id, tuple(i.block for i in items), tuple(i.step for i in items))
        out = self.transformer(x, t, text, kv_cache=cache, start_frame=self._start_frame(items[0]),
                               row_keys=[key], cache_pass=cache_pass).sample
        return list(out.split(self.layout.frames_per_block, dim=2))

    def _advance(self, item: WorkItem, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        if not item.is_denoising:
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
    prompts: PromptSchedule = ()  # the run's prompt schedule: ((0, prompt),) for one prompt
    cross_attention_builds: list[int] = field(default_factory=list)  # per worker: once per prompt it ran under


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


def switch_recache_blocks(model, switch_block: int) -> tuple[int, ...]:
    """The blocks a serial run re-encodes under the new prompt before ``switch_block`` starts, in
    one forward at t = 0 (its *switch pass*), as LongLive does (``interactive_causal_inference.py``,
    ``_recache_after_switch``, with its configuration's ``global_sink``): the last
    min(local_attn_size, frames so far) frames, where local_attn_size is the local window with its
    sinks, or every earlier frame without a window. Once the video is longer than that, the sinks
    keep their K/V (``causal_model.py`` protects the sink slots in a recompute) and the pass's
    first frames, whose K/V are neither kept nor read, drop out: the last ``local_window`` frames
    remain, attending to the sinks and to each other both ways."""
    per_block = model.layout.frames_per_block
    end = switch_block * per_block
    if model.local_window is None or end <= model.local_window + model.sink_frames:
        return tuple(range(switch_block))
    return tuple(range((end - model.local_window) // per_block, switch_block))


def switch_recache_plan(model, prompts: PromptSchedule) -> dict[int, tuple[int, ...]]:
    """Switch block -> the blocks a serial schedule recaches before it (``make_schedule``'s
    ``switch_recache``)."""
    return {block: switch_recache_blocks(model, block) for block, _ in prompts[1:]}


def as_prompt_schedule(prompt, num_blocks: int) -> PromptSchedule:
    """One prompt as a one-entry schedule, or a prompt schedule checked against the video's length."""
    return ((0, prompt),) if isinstance(prompt, str) else check_prompt_schedule(prompt, num_blocks)


def _check_switch_items(schedule: Schedule, prompts: PromptSchedule) -> None:
    served = {item.switch for tick in schedule.ticks for item in tick if item.switch is not None}
    stray = served - {block for block, _ in prompts[1:]}
    if stray:
        raise ValueError(f"the schedule recaches for switches at blocks {sorted(stray)}, which the prompt "
                         "schedule does not have")


class BlockCausalPipeline:
    """Runs one prompt, or a prompt schedule, through a block-causal model under any schedule on
    any executor."""

    def __init__(self, model):
        self.model = model

    def __call__(
        self,
        prompt: str | PromptSchedule,
        schedule: Schedule,
        executor,
        seed: int = 0,
        joint: bool = False,
        progress: ProgressFn | None = None,
        request_id: str = "run",
        bwcache: BWCacheConfig | None = None,
        on_block: FramesFn | None = None,
    ) -> PipelineOutput:
        """``prompt``: one prompt, or a prompt schedule ((block, prompt) pairs from block 0), each
        prompt taking over from its switch's moment (``Schedule.item_prompts``); the serial
        schedule's switch recaches are ``switch_recache_plan``'s, made by the caller.
        ``on_block(block, frames, t)`` gets each block's decoded frames as soon as the block is
        final, in block order; the frames of all blocks together equal decoding the whole video."""
        self.model.check_blocks(schedule.num_blocks)
        prompts = as_prompt_schedule(prompt, schedule.num_blocks)
        _check_switch_items(schedule, prompts)
        sampler = self.model.sampler
        if schedule.num_steps != sampler.num_steps:
            sampler = sampler.with_steps(schedule.num_steps)
        started = time.perf_counter()
        text, unknown = self.model.encode_text([text for _, text in prompts])
        text_s = time.perf_counter() - started
        job = DenoiseJob(
            transformer=self.model.transformer, text=text, sampler=sampler, layout=self.model.layout,
            num_blocks=schedule.num_blocks, seed=seed, joint=joint,
            local_window=self.model.local_window, sink_frames=self.model.sink_frames,
            rolling_anchor=self.model.rolling_anchor, request_id=request_id,
            bwcache=bwcache, prompts=schedule.item_prompts([block for block, _ in prompts[1:]]),
        )
        decoding = BlockDecoding(self.model, on_block)
        result = executor.execute(job, schedule, progress=progress, on_block=decoding)
        end = max(entry.end for entry in result.timeline)
        frames = decoding.finish(result.latents, end)
        reports = [r["bwcache"] for r in result.session_reports if "bwcache" in r]
        return PipelineOutput(
            frames=frames, latents=torch.cat([x.cpu() for x in result.latents], dim=2), schedule=schedule,
            timeline=result.timeline, model_calls=result.model_calls, executor=executor.name,
            workers=executor.workers, unknown_words=[word for words in unknown for word in words], text_s=text_s,
            decode_s=decoding.decode_s, shown_s=decoding.shown_s, block_frames=[len(f) for f in decoding.frames],
            communication=result.communication, bwcache=merge_bw_cache_stats(reports) if reports else None,
            prompts=prompts, cross_attention_builds=[r["cross_attention_builds"] for r in result.session_reports],
        )

"""BWCache (block-wise caching, arXiv 2509.13789) for block-causal video, as diffusers-style hooks.

**The method.** In a video DiT the hidden states leaving each transformer block change little
between adjacent denoising steps in the middle of sampling. BWCache measures that change — the
relative L1 distance ``‖h_i(k) − h_i(j)‖₁ / ‖h_i(j)‖₁`` of block ``i``'s output at step ``k``
and at the previous computed step ``j``, averaged over the indicator blocks — and when it is
below a threshold δ it reuses the cached hidden states of all transformer blocks for the next R
steps instead of computing them, then computes again.

**Many denoising loops at once.** The paper has one loop; block-causal generation has one per
video block, and under Block Cascading (or with several requests) forwards of different video
blocks interleave, even as rows of one batched forward. So all state is kept per
``(request, video block)``, read from the row keys the pipeline passes to the transformer
(``transformer.forward_state.row_keys``, each ``(request, video block, step)``), and every row
of a forward takes its own decision. The precise rule, for a video block with T steps:

- step 0 is always computed and starts the video block's state afresh, so a new run under the
  same request id never reads an old one; so are the steps below ``warmup_steps``;
- at a computed step k that has an earlier computed step j (k − 1, or the step before a reuse
  span), the indicator ι(k) compares their block outputs; if ι(k) < δ, steps k+1 … k+r reuse,
  with ``r = min(R, ⌊(T − k − 1) / 2⌋)``: at most half of the steps that remain, so reuse stays
  in the first half of what remains and the last step is always computed;
- recache items (step ``"recache"``), joint forwards (one row holding several video blocks at
  different steps) and rows without keys are always computed and keep no state;
- a video block's state is dropped after its last step;
- a step never reuses features computed under another prompt (a prompt switch reaching a video
  block in flight): it computes, and its indicator compares against the old prompt's features.

**What is reused: outputs, not residuals.** A reused row returns the hidden states that left the
last transformer block at its last computed step; the model's head still applies the new step's
timestep modulation. That is what the paper caches (block features), and it keeps nothing else:
a residual (output − input) would also need each video block's input kept. The distilled
models' samplers re-noise x0 with *fresh* noise between steps, so the inputs of two steps differ
by an independent noise draw, which a residual would carry into the prediction, while the cached
output has already denoised its own input. Measured on the bundled model the two came out within about
1 dB PSNR of each other; only on random weights, whose blocks barely move the residual stream,
do residuals win clearly.

**The KV cache of a skipped video block.** A row whose transformer blocks are skipped runs no
self-attention, so it stages no K/V: its frames keep, in every layer, the K/V committed by its
last computed step, and later video blocks that attend to it during a reuse span see those
(slightly noisier) K/V. Recache items and the last step are always computed, so the K/V a
finished video block leaves behind are written by a real forward, as without the cache.

**Rows of one batched forward** may decide differently. The transformer blocks then run on the
rows that compute only (``forward_state`` narrowed to those rows while they run); the other rows
pass through and get their cached output at the end. Computing every row and discarding some
results would spend the compute the cache exists to save, and would stage fresh K/V for the
reused rows, so a batched executor would no longer produce what a one-item-at-a-time executor
produces. ``mixed_forwards`` in the stats counts how often this happens.

**Token parallelism** (``cascade.model.context_parallel``: each process runs every forward on its
share of the tokens) leaves each process its share of every feature; the indicator's sums are
added over the processes, so it is the gathered features' indicator, the same bits on each, and
every process takes the same decisions (and runs the same collectives).

A transformer runs one forward at a time (its ``forward_state`` is shared), so the hooks keep
the forward in progress in the same one state as the per-video-block caches and per-request
stats. It is not diffusers' ``StateManager``, which keys state by one cache context per forward,
where here the rows of one forward belong to different video blocks.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Hashable

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState

_BW_CACHE_HOOK = "bw_cache"


@dataclass
class BWCacheConfig:
    """Settings of BWCache for runs of ``num_steps`` denoising steps per video block.

    Args:
        num_steps: T, the denoising steps of every video block (recache not counted): the reuse
            interval and the "first half of the remaining steps" rule depend on it.
        threshold: δ; reuse when the indicator is strictly below it. 0 never reuses,
            ``float("inf")`` reuses wherever the rules allow (a forced indicator).
        reuse_interval: R, the steps reused once triggered; default 10% of T, at least 1.
        indicator_blocks: indices of the transformer blocks whose outputs feed the indicator
            (default all, as in the paper). Each one's output of the last computed step is
            kept per video block in flight, so fewer blocks cost less memory on large models.
        warmup_steps: the first steps of every video block that are always computed (at least
            1). The indicator needs two computed steps, so reuse starts at step 2 at the earliest.
    """

    num_steps: int
    threshold: float = 0.15
    reuse_interval: int | None = None
    indicator_blocks: tuple[int, ...] | None = None
    warmup_steps: int = 1

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {self.num_steps}")
        if not self.threshold >= 0:
            raise ValueError(f"threshold must be at least 0, got {self.threshold}")
        if self.reuse_interval is not None and self.reuse_interval < 1:
            raise ValueError(f"reuse_interval must be at least 1, got {self.reuse_interval}")
        if self.warmup_steps < 1:
            raise ValueError(f"warmup_steps must be at least 1, got {self.warmup_steps}")
        if self.indicator_blocks is not None:
            self.indicator_blocks = tuple(sorted({int(i) for i in self.indicator_blocks}))
            if not self.indicator_blocks:
                raise ValueError("indicator_blocks must name at least one block (None: all)")

    @property
    def interval(self) -> int:
        """R: as given, or 10% of the steps (at least 1), the paper's default."""
        return self.reuse_interval or max(1, round(0.1 * self.num_steps))

    def reuse_span(self, step: int) -> int:
        """How many steps after the computed ``step`` reuse its features when the indicator fires."""
        if step + 1 < self.warmup_steps:
            return 0
        return min(self.interval, (self.num_steps - step - 1) // 2)


@dataclass
class _VideoBlockCache:
    """What one video block of one request keeps from its last computed step."""

    step: int
    features: dict[int, torch.Tensor]  # indicator block -> its output [1, tokens, dim]
    output: torch.Tensor  # the last transformer block's output [1, tokens, dim]
    reuse_until: int  # steps after ``step`` up to this one reuse ``output``
    text: object  # the prompt embedding ``output`` was computed under (the KV cache's text source)


@dataclass
class _RequestStats:
    forwards: int = 0  # rows seen (one per work item)
    computed: int = 0
    reused: int = 0
    mixed_forwards: int = 0  # batched forwards whose rows decided differently
    indicator: list[tuple[int, int, float]] = field(default_factory=list)  # (video block, step, ι)


@dataclass(frozen=True)
class _Row:
    """One row of the forward in progress: who it is and whether it reuses."""

    request: Hashable | None = None
    key: tuple | None = None  # (request, video block) for rows that keep state
    step: int | None = None
    reuse: bool = False


class BWCacheState(BaseState):
    """All BWCache state of one transformer: per video block, per request, and the forward in progress."""

    def __init__(self):
        super().__init__()
        self.video_blocks: dict[tuple, _VideoBlockCache] = {}
        self.requests: dict[Hashable, _RequestStats] = {}
        self._clear_forward()

    def _clear_forward(self) -> None:
        self.rows: list[_Row] = []
        self.compute_rows: list[int] | None = None  # None: every row computes
        self.compute_index: torch.Tensor | None = None
        self.hidden: dict[int, torch.Tensor] = {}  # indicator block -> its output in this forward
        self.text: object = None  # the prompt embedding this forward runs under

    def reset(self, request: Hashable | None = None) -> None:
        """Forget everything, or only what belongs to ``request``."""
        if request is None:
            self.video_blocks.clear()
            self.requests.clear()
        else:
            self.video_blocks = {k: v for k, v in self.video_blocks.items() if k[0] != request}
            self.requests.pop(request, None)
        self._clear_forward()


class BWCacheBlockHook(ModelHook):
    """Runs one transformer block for the rows that compute; the first block plans, the last finishes."""

    _is_stateful = True

    def __init__(self, state: BWCacheState, forward_state, config: BWCacheConfig, index: int, num_blocks: int):
        super().__init__()
        self.state = state
        self.forward_state = forward_state
        self.config = config
        self.index = index
        self.is_head = index == 0
        self.is_tail = index == num_blocks - 1
        self.feeds_indicator = config.indicator_blocks is None or index in config.indicator_blocks

    def new_forward(self, module: torch.nn.Module, hidden_states: torch.Tensor, *args, **kwargs):
        state = self.state
        if self.is_head:
            self._plan(hidden_states.shape[0], hidden_states.device)
        if state.compute_rows is None:
            output = self.fn_ref.original_forward(hidden_states, *args, **kwargs)
        elif not state.compute_rows:
            output = hidden_states
        else:
            index, rows = state.compute_index, len(state.rows)
            with self._only_computing_rows():
                computed = self.fn_ref.original_forward(*_take_rows((hidden_states, *args), index, rows),
                                                        **_take_rows(kwargs, index, rows))
            output = hidden_states.index_copy(0, index, computed)
        if self.feeds_indicator:
            state.hidden[self.index] = output
        if self.is_tail:
            output = self._finish(output)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        self.state.reset()
        return module

    @torch.compiler.disable
    def _plan(self, rows: int, device: torch.device) -> None:
        """Decide for every row of this forward whether it computes or reuses."""
        state = self.state
        keys = self.forward_state.row_keys or [None] * rows
        state._clear_forward()
        cache = self.forward_state.kv_cache
        state.text = cache.text_source if cache is not None else None
        state.rows = [self._row(key) for key in keys]
        if any(row.reuse for row in state.rows):
            state.compute_rows = [i for i, row in enumerate(state.rows) if not row.reuse]
            state.compute_index = torch.tensor(state.compute_rows, dtype=torch.long, device=device)

    def _row(self, key) -> _Row:
        if not (isinstance(key, tuple) and len(key) == 3):
            return _Row()
        request, block, step = key
        if not (isinstance(block, int) and isinstance(step, int)):
            return _Row(request)  # recache or joint: always computed, no state
        if step >= self.config.num_steps:
            raise ValueError(f"BWCacheConfig.num_steps is {self.config.num_steps} but a forward runs step {step}")
        cache_key = (request, block)
        if step == 0:
            self.state.video_blocks.pop(cache_key, None)
        cached = self.state.video_blocks.get(cache_key)
        # features computed under another prompt are not reused: after a switch, a block in
        # flight takes the new prompt from its next step, as without the cache
        reuse = cached is not None and cached.step < step <= cached.reuse_until and cached.text is self.state.text
        return _Row(request, cache_key, step, reuse)

    @contextmanager
    def _only_computing_rows(self):
        """Narrow what the attention processors read to the computing rows while the block runs."""
        fs, picked = self.forward_state, self.state.compute_rows
        saved = fs.start_frames, fs.row_keys, fs.cache_passes, fs.attention_mask
        fs.start_frames = [fs.start_frames[i] for i in picked] if fs.start_frames is not None else None
        fs.row_keys = [fs.row_keys[i] for i in picked] if fs.row_keys is not None else None
        fs.cache_passes = [fs.cache_passes[i] for i in picked] if fs.cache_passes is not None else None
        fs.attention_mask = _take_rows(fs.attention_mask, self.state.compute_index, len(self.state.rows))
        try:
            yield
        finally:
            fs.start_frames, fs.row_keys, fs.cache_passes, fs.attention_mask = saved

    @torch.compiler.disable
    def _finish(self, output: torch.Tensor) -> torch.Tensor:
        """Put the cached outputs into the reused rows, then update caches, indicator and stats."""
        state = self.state
        reused = [i for i, row in enumerate(state.rows) if row.reuse]
        if reused:
            cached = torch.cat([state.video_blocks[state.rows[i].key].output for i in reused])
            output = output.index_copy(0, torch.tensor(reused, device=output.device), cached)
        mixed = 0 < len(reused) < len(state.rows)
        for i, row in enumerate(state.rows):
            if row.request is None:
                continue
            stats = state.requests.setdefault(row.request, _RequestStats())
            stats.forwards += 1
            if row.reuse:
                stats.reused += 1
            else:
                stats.computed += 1
                if row.key is not None:
                    self._remember(row, i, output, stats)
        if mixed:
            for request in {row.request for row in state.rows if row.request is not None}:
                state.requests[request].mixed_forwards += 1
        state._clear_forward()
        return output

    def _remember(self, row: _Row, i: int, output: torch.Tensor, stats: _RequestStats) -> None:
        """Cache a computed row's features and decide how many of the next steps reuse them."""
        features = {block: hidden[i : i + 1] for block, hidden in self.state.hidden.items()}
        previous = self.state.video_blocks.get(row.key)
        span = 0
        if previous is not None:
            value = relative_l1(features, previous.features, self._total())
            stats.indicator.append((row.key[1], row.step, value))
            if value < self.config.threshold:
                span = self.config.reuse_span(row.step)
        if row.step == self.config.num_steps - 1:
            self.state.video_blocks.pop(row.key, None)
        else:
            self.state.video_blocks[row.key] = _VideoBlockCache(row.step, features, output[i : i + 1], row.step + span,
                                                                self.state.text)

    def _total(self):
        """How a sum over a forward's tokens is completed: under token parallelism each process holds
        its share of the tokens, and the indicator is that of the gathered features."""
        parallel = self.forward_state.token_parallel
        return parallel.total if parallel is not None else None


def relative_l1(current: dict[int, torch.Tensor], previous: dict[int, torch.Tensor], total=None) -> float:
    """BWCache's indicator: ‖h − h_prev‖₁ / ‖h_prev‖₁ per block, averaged over the blocks given.
    ``total``: adds the per-block sums [blocks, 2] over every process holding a share of the
    tokens (the same on each, so all decide alike); None: these are all the tokens."""
    sums = torch.stack([torch.stack([(current[b].float() - previous[b].float()).abs().sum(),
                                     previous[b].float().abs().sum()]) for b in current])
    if total is not None:
        sums = total(sums)
    return (sums[:, 0] / sums[:, 1]).mean().item()


def _take_rows(value, index: torch.Tensor, rows: int):
    """``value`` restricted to the rows in ``index``: tensors whose first dimension is the batch
    are sliced, tensors broadcast over it (first dimension 1) and everything else pass as they are."""
    if isinstance(value, torch.Tensor):
        return value.index_select(0, index) if value.ndim and value.shape[0] == rows else value
    if isinstance(value, (tuple, list)):
        return type(value)(_take_rows(v, index, rows) for v in value)
    if isinstance(value, dict):
        return {k: _take_rows(v, index, rows) for k, v in value.items()}
    return value


def apply_bw_cache(transformer: torch.nn.Module, config: BWCacheConfig) -> None:
    """Install BWCache on a ``CausalWanTransformer``: one hook per transformer block, one shared state.

    The transformer then caches for every forward that carries row keys; stats are kept per
    request (:func:`bw_cache_stats`) until :func:`reset_bw_cache`.
    """
    blocks = transformer.blocks
    if config.indicator_blocks is not None and not set(config.indicator_blocks) <= set(range(len(blocks))):
        raise ValueError(f"indicator_blocks {config.indicator_blocks} must lie in 0..{len(blocks) - 1}")
    if getattr(transformer, "is_cache_enabled", False):
        raise ValueError("a diffusers cache is enabled on this transformer; disable it before applying BWCache")
    if _head_hook(transformer) is not None:
        raise ValueError("BWCache is already applied to this transformer; remove it first")
    state = BWCacheState()
    for index, block in enumerate(blocks):
        hook = BWCacheBlockHook(state, transformer.forward_state, config, index, len(blocks))
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _BW_CACHE_HOOK)
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def remove_bw_cache(transformer: torch.nn.Module) -> None:
    """Remove BWCache's hooks and state; the blocks run their own forward again. No-op if not applied."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.remove_hook(_BW_CACHE_HOOK, recurse=True)
    registry.invalidate_child_registries_cache()


def bw_cache_stats(transformer: torch.nn.Module, request_id: Hashable) -> dict:
    """What BWCache did for ``request_id`` since it was applied or reset (zeros if nothing).

    ``forwards`` counts work items (rows), each ``computed`` or ``reused``; ``reuse_rate`` is
    reused / forwards; ``block_computations`` and ``block_computations_skipped`` count transformer
    blocks run and skipped, ``block_computation_reduction`` is all / run (×);
    ``indicator`` lists ``[video block, step, ι]`` for every computed step with a predecessor,
    by video block and step.
    """
    hook = _head_hook(transformer)
    if hook is None:
        raise ValueError("BWCache is not applied to this transformer")
    stats = hook.state.requests.get(request_id, _RequestStats())
    layers = len(transformer.blocks)
    counts = {"forwards": stats.forwards, "computed": stats.computed, "reused": stats.reused,
              "block_computations": stats.computed * layers, "block_computations_skipped": stats.reused * layers,
              "mixed_forwards": stats.mixed_forwards}
    indicator = [[block, step, value] for block, step, value in stats.indicator]
    return _stats(hook.config.threshold, hook.config.interval, counts, indicator)


_COUNTS = ("forwards", "computed", "reused", "block_computations", "block_computations_skipped", "mixed_forwards")


def merge_bw_cache_stats(reports: list[dict]) -> dict:
    """One run's ``bw_cache_stats`` from the reports of every transformer that ran part of it
    (a pool's workers, each caching its own video blocks), as if one transformer had run it all."""
    if not reports:
        raise ValueError("no BWCache reports to merge")
    counts = {key: sum(r[key] for r in reports) for key in _COUNTS}
    indicator = [entry for r in reports for entry in r["indicator"]]
    return _stats(reports[0]["threshold"], reports[0]["reuse_interval"], counts, indicator)


def _stats(threshold: float, interval: int, counts: dict, indicator: list) -> dict:
    return {
        "threshold": threshold,
        "reuse_interval": interval,
        **counts,
        "reuse_rate": counts["reused"] / counts["forwards"] if counts["forwards"] else 0.0,
        "block_computation_reduction": counts["forwards"] / counts["computed"] if counts["computed"] else 1.0,
        "indicator": sorted(indicator, key=lambda entry: (entry[0], entry[1])),  # by video block, then step
    }


def reset_bw_cache(transformer: torch.nn.Module, request_id: Hashable | None = None) -> None:
    """Drop the cached features and stats of ``request_id`` (None: of every request)."""
    hook = _head_hook(transformer)
    if hook is None:
        raise ValueError("BWCache is not applied to this transformer")
    hook.state.reset(request_id)


def _head_hook(transformer: torch.nn.Module) -> BWCacheBlockHook | None:
    registry = getattr(transformer.blocks[0], "_diffusers_hook", None)
    return registry.get_hook(_BW_CACHE_HOOK) if registry is not None else None

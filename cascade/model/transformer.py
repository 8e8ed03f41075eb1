"""CausalWanTransformer: diffusers' Wan transformer made block-causal.

It is ``WanTransformer3DModel`` (same config, same state-dict keys, same modules) with what
block-causal inference needs and diffusers lacks (REFERENCES.md):

- a self-attention KV cache over earlier video blocks (``KVCache``): a forward attends to the
  committed K/V of earlier frames plus its own fresh K/V, and stages its own K/V for commit;
- the prompt's cross-attention K/V computed once and kept in the same cache;
- RoPE offset by the block's first latent frame (``start_frame``), so a block sits at its place
  in the video;
- per-frame timesteps (``timestep`` of shape [B, F]): each frame gets its own modulation;
- an optional local window with sink frames (LongLive), configured on the cache, and Rolling
  Forcing's rolling anchor: its sink frames moved next to a denoising forward's window, and the
  cache passes (``cache_pass``) that see only the most recent frames.

With ``kv_cache=None`` it is plain full attention over the frames given (optionally under an
explicit ``attention_mask``, which is how training sees a whole clip block-causally).
Rows of one forward may start at different frames (``start_frame`` as a list): the batched
executor runs the blocks of one tick together that way.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from .kv_cache import KVCache


@dataclass
class _ForwardState:
    """What the attention processors of one forward need to know; set by the model per call."""

    kv_cache: KVCache | None = None
    start_frames: list[int] | None = None
    num_frames: int = 0
    attention_mask: torch.Tensor | None = None
    row_keys: list | None = None
    cache_passes: list[bool] | None = None  # per row: a t = 0 forward that only rewrites the row's K/V
    frame_rotation: Callable | None = None  # (shifts per row, device) -> RoPE by whole frames, the model's
    # the process's part in token parallelism (context_parallel.TokenParallel) while it is applied
    token_parallel: object | None = None
    _context: tuple | None = None
    _sinks: tuple | None = None

    def context_plan(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Token index of the committed frames the rows see, and a key mask if rows differ.

        The same for every layer of a forward (the cache is committed only between forwards),
        so it is worked out once per call.
        """
        if self._context is None:
            self._context = self._plan(self.kv_cache)
        return self._context

    def _row_frames(self, cache: KVCache) -> list[set[int]]:
        passes = self.cache_passes or [False] * len(self.start_frames)
        return [set(cache.context_frames(s, self.num_frames, p)) for s, p in zip(self.start_frames, passes)]

    def sink_rotation(self) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """(sink tokens at the head of the context, cos, sin [rows, 1, 1, head_dim]) when the cache
        moves its sink frames for some row of this forward (``KVCache.sink_shift``), else None.
        Once per forward, like the plan."""
        if self._sinks is None:
            self._sinks = (self._sink_plan(self.kv_cache),)
        return self._sinks[0]

    def _sink_plan(self, cache: KVCache):
        passes = self.cache_passes or [False] * len(self.start_frames)
        shifts = [cache.sink_shift(s, self.num_frames, p) for s, p in zip(self.start_frames, passes)]
        if not any(shifts):
            return None
        frames = set().union(*self._row_frames(cache))
        sinks = sum(f < cache.sink_frames for f in frames) * cache.tokens_per_frame
        return (sinks, *self.frame_rotation(shifts, cache.device)) if sinks else None

    def _plan(self, cache: KVCache):
        per_row = self._row_frames(cache)
        frames = sorted(set().union(*per_row))
        if not frames:
            return None, None
        index = cache.token_index(frames)
        if all(len(r) == len(frames) for r in per_row):
            return index, None
        visible = [[f in r for f in frames for _ in range(cache.tokens_per_frame)] for r in per_row]
        mask = torch.tensor(visible, dtype=torch.bool, device=cache.device)
        own = torch.ones(len(per_row), self.num_frames * cache.tokens_per_frame, dtype=torch.bool, device=cache.device)
        return index, torch.cat([mask, own], dim=1)[:, None, None, :]


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs, as Wan does (same layout as diffusers' Wan processor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _query(attn, hidden_states: torch.Tensor) -> torch.Tensor:
    """Wan's normalised queries, split into heads: [B, S, heads, head_dim]."""
    return attn.norm_q(attn.to_q(hidden_states)).unflatten(-1, (attn.heads, -1))


def _key_value(attn, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's normalised keys and values of ``states`` [..., S, D], split into heads."""
    key = attn.norm_k(attn.to_k(states)).unflatten(-1, (attn.heads, -1))
    return key, attn.to_v(states).unflatten(-1, (attn.heads, -1))


def _check_text_per_frame(text: torch.Tensor, rows: int, frames: int, kv_cache) -> None:
    """A text per latent frame is for cache-free forwards, one for every row and frame."""
    if kv_cache is None and text.shape[:2] == (rows, frames):
        return
    with_cache = " with a kv_cache" if kv_cache is not None else ""
    raise ValueError(f"a text per frame must be [{rows}, {frames}, L, D] in a cache-free forward, "
                     f"got {list(text.shape)}{with_cache}")


class CausalWanAttnProcessor:
    """Wan attention whose self-attention reads and stages the block KV cache.

    One processor per layer and attention type; all share the model's ``_ForwardState``.
    """

    def __init__(self, layer: int, state: _ForwardState):
        self.layer = layer
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if not attn.is_cross_attention:
            query, key, value = self._self_qkv(attn, hidden_states, rotary_emb)
            parallel = self.state.token_parallel
            if parallel is not None:
                out = parallel.attention(self.with_cache, query, key, value, self.state.num_frames)
            else:
                key, value, mask = self.with_cache(key, value)
                out = dispatch_attention_fn(query, key, value, attn_mask=mask)
        elif encoder_hidden_states.ndim == 4:
            query, out = self._cross_per_frame(attn, hidden_states, encoder_hidden_states)
        else:
            query, key, value = self._cross_qkv(attn, hidden_states, encoder_hidden_states)
            out = dispatch_attention_fn(query, key, value)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def _self_qkv(self, attn, hidden_states, rotary_emb):
        query = _query(attn, hidden_states)
        key, value = _key_value(attn, hidden_states)
        return _apply_rotary(query, *rotary_emb), _apply_rotary(key, *rotary_emb), value

    def with_cache(self, key: torch.Tensor, value: torch.Tensor):
        """Stage the forward's own K/V (in frame order) in the KV cache and return them after the
        committed context the rows see, with a key mask if rows differ; without a cache, as they
        are with the forward's ``attention_mask``."""
        cache = self.state.kv_cache
        if cache is None:
            return key, value, self.state.attention_mask
        cache.stage(self.layer, self.state.start_frames, key, value)
        return self._with_context(cache, key, value)

    def _with_context(self, cache: KVCache, key: torch.Tensor, value: torch.Tensor):
        """Prepend the committed K/V of the earlier frames each row may see."""
        rows = key.shape[0]
        index, mask = self.state.context_plan()
        if index is None:
            return key, value, None
        cached_k = cache.k[self.layer].index_select(1, index).to(key.dtype)
        cached_v = cache.v[self.layer].index_select(1, index).to(value.dtype)
        if cached_k.shape[0] != rows:
            cached_k = cached_k.expand(rows, -1, -1, -1)
            cached_v = cached_v.expand(rows, -1, -1, -1)
        sinks = self.state.sink_rotation()
        if sinks is not None:  # rotating a key by whole frames moves it that many frames later
            count, cos, sin = sinks
            cached_k = torch.cat([_apply_rotary(cached_k[:, :count], cos, sin), cached_k[:, count:]], dim=1)
        key = torch.cat([cached_k, key], dim=1)
        value = torch.cat([cached_v, value], dim=1)
        return key, value, mask

    def _cross_qkv(self, attn, hidden_states, context):
        query = _query(attn, hidden_states)
        cache = self.state.kv_cache
        if cache is not None and self.layer in cache.cross_kv:
            key, value = cache.cross_kv[self.layer]
        else:
            key, value = _key_value(attn, context)
            if cache is not None:
                cache.cross_kv[self.layer] = (key, value)
        rows = query.shape[0]
        if key.shape[0] != rows:
            key, value = key.expand(rows, -1, -1, -1), value.expand(rows, -1, -1, -1)
        return query, key, value

    def _cross_per_frame(self, attn, hidden_states, context):
        """Cross-attention where each latent frame reads its own text (context [B, F, L, D]):
        the frames' queries become rows of their own, so each sees only its frame's prompt,
        exactly as if every frame had been run under its prompt alone."""
        rows, frames = context.shape[:2]
        query = _query(attn, hidden_states)
        key, value = _key_value(attn, context)
        per_frame_query = query.unflatten(1, (frames, -1)).flatten(0, 1)
        out = dispatch_attention_fn(per_frame_query, key.flatten(0, 1), value.flatten(0, 1))
        return query, out.unflatten(0, (rows, frames)).flatten(1, 2)


class CausalWanTransformer(WanTransformer3DModel):
    """``WanTransformer3DModel`` with a block KV cache, frame-offset RoPE and per-frame timesteps.

    ``sinusoid_dtype``: the dtype the timestep sinusoid is computed in. float32 is diffusers' own
    path; the original Wan code (and every checkpoint trained with it) computes it in float64,
    which loaders of those checkpoints set (a ~1e-5 difference in the embedding at t≈1000).
    """

    sinusoid_dtype: torch.dtype = torch.float32

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._state = _ForwardState()
        for layer, block in enumerate(self.blocks):
            block.attn1.set_processor(CausalWanAttnProcessor(layer, self._state))
            block.attn2.set_processor(CausalWanAttnProcessor(layer, self._state))

    # diffusers' from_config/from_pretrained read the config keys off __init__'s signature.
    __init__.__signature__ = inspect.signature(WanTransformer3DModel.__init__)

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, p_h, p_w = self.config.patch_size
        return (height // p_h) * (width // p_w)

    def new_kv_cache(
        self,
        num_frames: int,
        height: int,
        width: int,
        batch_size: int = 1,
        local_window: int | None = None,
        sink_frames: int = 0,
        device=None,
        dtype: torch.dtype | None = None,
        reuse: KVCache | None = None,
        rolling_anchor: bool = False,
        shard: dict | None = None,
    ) -> KVCache:
        """An empty cache for a video of ``num_frames`` latent frames of ``height``×``width``.

        ``reuse``: a cache no longer needed; if it has the same geometry it is emptied and returned
        instead of allocating (and page-faulting) a new one. ``shard``: the ``num_heads`` or
        ``tokens_per_frame`` this process keeps under token parallelism (``TokenParallel.cache_shard``).
        """
        geometry = dict(
            num_layers=len(self.blocks),
            num_frames=num_frames // self.config.patch_size[0],
            tokens_per_frame=self.tokens_per_frame(height, width),
            num_heads=self.config.num_attention_heads,
            head_dim=self.config.attention_head_dim,
            batch_size=batch_size,
            local_window=local_window,
            sink_frames=sink_frames,
            device=torch.device(device if device is not None else self.device),
            dtype=dtype or self.dtype,
            rolling_anchor=rolling_anchor,
        )
        geometry.update(shard or {})
        if reuse is not None and reuse.geometry == geometry:
            reuse.clear()
            return reuse
        return KVCache(**geometry)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        kv_cache: KVCache | None = None,
        start_frame: int | Sequence[int] = 0,
        attention_mask: torch.Tensor | None = None,
        row_keys: Sequence | None = None,
        cache_pass: bool | Sequence[bool] = False,
        return_dict: bool = True,
    ):
        """Denoise ``hidden_states`` [B, C, F, H, W] whose first latent frame is ``start_frame``.

        ``timestep``: [B] (one per row) or [B, F] (one per latent frame).
        ``encoder_hidden_states``: [B, L, D], one text per row, or [B, F, L, D], one per latent
        frame (cache-free forwards only: how training shows a clip whose prompt switches at a
        block its own caption per block). With ``kv_cache`` the
        rows attend to the committed K/V of earlier frames and stage their own; without it,
        attention is full over the given frames, restricted by ``attention_mask`` if given
        (bool, broadcastable to [B, heads, tokens, tokens], True = may attend).
        ``row_keys``: an opaque, hashable identifier per row (the pipeline passes request, video
        block and step) for hooks that keep per-row state across calls, such as BWCache; the
        model itself never reads them.
        ``cache_pass``: per row (or for all), whether the row is a cache pass, the t = 0 forward
        of a finished block that only rewrites its K/V (Rolling Forcing's ``updating_cache``):
        under a rolling anchor it attends to other frames than a denoising row (``KVCache``).
        """
        rows, _, num_frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        frames, grid_h, grid_w = num_frames // p_t, height // p_h, width // p_w
        start_frames = self._start_frames(start_frame, rows)
        if kv_cache is not None and attention_mask is not None:
            raise ValueError("attention_mask is for cache-free forwards; the cache builds its own")
        if encoder_hidden_states.ndim == 4:
            _check_text_per_frame(encoder_hidden_states, rows, frames, kv_cache)

        rotary_emb = self._rope(start_frames, frames, grid_h, grid_w, hidden_states.device)
        tokens = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
        temb, modulation = self._time_embedding(timestep, rows, frames, grid_h * grid_w, tokens)
        context = self._text_context(encoder_hidden_states, kv_cache)

        if row_keys is not None and len(row_keys) != rows:
            raise ValueError(f"row_keys has {len(row_keys)} entries for {rows} rows")
        cache_passes = [cache_pass] * rows if isinstance(cache_pass, bool) else [bool(p) for p in cache_pass]
        if len(cache_passes) != rows:
            raise ValueError(f"cache_pass has {len(cache_passes)} entries for {rows} rows")
        self._state.cache_passes = cache_passes
        with self._forward_state(kv_cache, start_frames, frames, attention_mask, row_keys):
            for block in self.blocks:
                tokens = block(tokens, context, modulation, rotary_emb)

        output = self._head(tokens, temb).reshape(rows, frames, grid_h, grid_w, p_t, p_h, p_w, -1)
        output = output.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    @staticmethod
    def _start_frames(start_frame, rows: int) -> list[int]:
        if isinstance(start_frame, int):
            return [start_frame] * rows
        starts = [int(s) for s in start_frame]
        if len(starts) != rows:
            raise ValueError(f"start_frame has {len(starts)} entries for {rows} rows")
        return starts

    def _rope(self, start_frames: list[int], frames: int, grid_h: int, grid_w: int, device):
        """diffusers' RoPE tables for frames [start, start + frames), one per distinct start."""
        p_t, p_h, p_w = self.config.patch_size
        per_frame = grid_h * grid_w
        tables = {}
        for start in set(start_frames):
            shape_only = torch.empty(1, 1, (start + frames) * p_t, grid_h * p_h, grid_w * p_w, device="meta")
            cos, sin = self.rope(shape_only)
            tables[start] = (cos[:, start * per_frame :], sin[:, start * per_frame :])
        if len(tables) == 1:
            return tables[start_frames[0]]
        cos = torch.cat([tables[s][0] for s in start_frames])
        sin = torch.cat([tables[s][1] for s in start_frames])
        return cos.to(device), sin.to(device)

    def _frame_rotation(self, shifts: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE by whole frames, per row (cos, sin [rows, 1, 1, head_dim]): diffusers' table at
        frame ``shift`` of a one-patch grid, whose height and width angles are 0."""
        p_t, p_h, p_w = self.config.patch_size
        cos, sin = self.rope(torch.empty(1, 1, (max(shifts) + 1) * p_t, p_h, p_w, device="meta"))
        frames = torch.tensor(shifts, device=cos.device)
        return cos[0, frames].unsqueeze(1).to(device), sin[0, frames].unsqueeze(1).to(device)

    def _time_embedding(self, timestep: torch.Tensor, rows: int, frames: int, per_frame: int, tokens: torch.Tensor):
        """Scalar timesteps take diffusers' own path; per-frame ones are embedded per frame and
        spread to that frame's tokens (of ``tokens``' device and dtype: diffusers' ``self.device``
        walks every module, about a millisecond per forward of the bundled model)."""
        embedder = self.condition_embedder
        dtype = tokens.dtype
        timestep = torch.as_tensor(timestep, device=tokens.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(rows)
        per_frame_steps = timestep.ndim == 2
        if per_frame_steps and timestep.shape != (rows, frames):
            raise ValueError(f"per-frame timestep must be [{rows}, {frames}], got {list(timestep.shape)}")
        projected = self._sinusoid(timestep.flatten())
        time_dtype = next(iter(embedder.time_embedder.parameters())).dtype
        temb = embedder.time_embedder(projected.to(time_dtype)).to(dtype)
        modulation = embedder.time_proj(embedder.act_fn(temb))
        if not per_frame_steps:
            return temb, modulation.unflatten(1, (6, -1))
        temb = temb.unflatten(0, (rows, frames)).repeat_interleave(per_frame, dim=1)
        modulation = modulation.unflatten(0, (rows, frames)).repeat_interleave(per_frame, dim=1)
        return temb, modulation.unflatten(2, (6, -1))

    def _sinusoid(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The [cos, sin] timestep embedding (period 10000), in ``sinusoid_dtype``."""
        if self.sinusoid_dtype == torch.float32:
            return self.condition_embedder.timesteps_proj(timesteps)
        half = self.config.freq_dim // 2
        exponents = torch.arange(half, dtype=self.sinusoid_dtype, device=timesteps.device) / half
        angles = torch.outer(timesteps.to(self.sinusoid_dtype), torch.pow(10000.0, -exponents))
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)

    def _text_context(self, encoder_hidden_states: torch.Tensor, kv_cache: KVCache | None) -> torch.Tensor:
        if kv_cache is None:
            return self.condition_embedder.text_embedder(encoder_hidden_states)
        if not kv_cache.set_text(encoder_hidden_states) or kv_cache.text_context is None:
            kv_cache.text_context = self.condition_embedder.text_embedder(encoder_hidden_states)
        return kv_cache.text_context

    @property
    def forward_state(self) -> _ForwardState:
        """The call in progress (cache, start frames, row keys): what hooks may read."""
        return self._state

    @contextmanager
    def _forward_state(self, kv_cache, start_frames, frames, attention_mask, row_keys):
        state = self._state
        state.kv_cache, state.start_frames, state.num_frames = kv_cache, start_frames, frames
        state.attention_mask, state.row_keys = attention_mask, list(row_keys) if row_keys is not None else None
        state.frame_rotation, state._context, state._sinks = self._frame_rotation, None, None
        try:
            yield
        finally:
            state.kv_cache, state.start_frames, state.attention_mask, state.row_keys = None, None, None, None
            state.cache_passes, state.frame_rotation, state._context, state._sinks = None, None, None, None

    def _head(self, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if temb.ndim == 3:
            shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        tokens = (self.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
        return self.proj_out(tokens)

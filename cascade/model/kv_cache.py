"""The block KV cache: self-attention K/V of every latent frame of one video, per layer.

K is stored after RoPE, at the frame's absolute position, so a later block can attend to it
without knowing where it came from. A forward never writes the cache directly: it *stages* the
K/V of its own frames, and the caller commits staged K/V when the items that must see the old
values are done. That is how the pipeline keeps the context rule of a schedule (an item at tick τ
sees the K/V earlier blocks had at the end of tick τ−1) however many items share a tick.

The cross-attention K/V of the prompt are computed once and kept here too; a new prompt
embedding (a prompt switch) replaces them without touching the self-attention K/V.

A cache with a *rolling anchor* (Rolling Forcing) reads its sink frames differently: a forward
that denoises sees them moved right before its other context (``sink_shift``), and a cache pass
(the t = 0 forward that only rewrites a block's K/V) sees the most recent frames at their own
places and no sinks beyond them (``context_frames``). The stored K stay at their own frames.
"""

from __future__ import annotations

import torch


def window_frames(start_frame: int, num_frames: int, local_window: int | None, sink_frames: int) -> list[int]:
    """The earlier frames a block of ``num_frames`` starting at ``start_frame`` may attend to.

    With a local window (LongLive), a query block sees the last ``local_window`` frames that end
    with its own last frame, plus the first ``sink_frames`` frames of the video; else every
    earlier frame.
    """
    end = start_frame + num_frames
    first = 0 if local_window is None else max(0, end - local_window)
    return [f for f in range(start_frame) if (f >= first or f < sink_frames)]


class KVCache:
    def __init__(
        self,
        num_layers: int,
        num_frames: int,
        tokens_per_frame: int,
        num_heads: int,
        head_dim: int,
        batch_size: int = 1,
        local_window: int | None = None,
        sink_frames: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        rolling_anchor: bool = False,
    ):
        if local_window is not None and local_window < 1:
            raise ValueError(f"local_window must be at least 1 frame, got {local_window}")
        if rolling_anchor and (local_window is None or sink_frames < 1):
            raise ValueError("a rolling anchor moves sink frames within a local window: it needs both")
        self.num_layers = num_layers
        self.num_frames = num_frames
        self.tokens_per_frame = tokens_per_frame
        self.batch_size = batch_size
        self.local_window = local_window
        self.sink_frames = sink_frames
        self.rolling_anchor = rolling_anchor
        shape = (num_layers, batch_size, num_frames * tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.geometry = dict(num_layers=num_layers, num_frames=num_frames, tokens_per_frame=tokens_per_frame,
                             num_heads=num_heads, head_dim=head_dim, batch_size=batch_size, local_window=local_window,
                             sink_frames=sink_frames, device=self.k.device, dtype=dtype, rolling_anchor=rolling_anchor)
        self.clear()

    def clear(self) -> None:
        """Forget every frame and the prompt: as new. Stale K/V stay in memory but are never read,
        since attention reads filled frames only."""
        self.filled = [False] * self.num_frames
        self._staged: list[tuple[int, list[int], torch.Tensor, torch.Tensor]] = []
        self.text_source: torch.Tensor | None = None
        self.text_context: torch.Tensor | None = None
        self.cross_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.text_builds = 0  # times the cross-attention cache was emptied for a new prompt embedding

    @property
    def device(self) -> torch.device:
        return self.k.device

    def context_frames(self, start_frame: int, num_frames: int, cache_pass: bool = False) -> list[int]:
        """The earlier frames a block starting at ``start_frame`` attends to (``window_frames``),
        committed ones only.

        With a rolling anchor, a cache pass sees the ``local_window + sink_frames`` most recent
        frames, its own among them, and nothing older: Rolling Forcing's ``updating_cache``
        forward reads the last ``max_attention_size`` (21 frames) of its cache, where the first
        block is still among them only while the video is that short
        (``wan/modules/causal_model.py``, ``CausalWanSelfAttention.forward``)."""
        if self.rolling_anchor and cache_pass:
            first = max(0, start_frame + num_frames - self.local_window - self.sink_frames)
            frames = list(range(first, start_frame))
        else:
            frames = window_frames(start_frame, num_frames, self.local_window, self.sink_frames)
        return [f for f in frames if self.filled[f]]

    def sink_shift(self, start_frame: int, num_frames: int, cache_pass: bool = False) -> int:
        """How many frames later than their own the sink frames' keys sit for this forward: 0
        but with a rolling anchor, where a denoising forward sees them right before the rest of
        its context. Rolling Forcing stores its first block un-rotated and rotates it to
        ``rope_start_frame = current_start_frame - working_cache_frame_length - 3`` before each
        window (same function as above), which is ``end - local_window - sink_frames`` once the
        window has moved past the anchor, and the anchor's own place before."""
        if not self.rolling_anchor or cache_pass:
            return 0
        return max(0, start_frame + num_frames - self.local_window - self.sink_frames)

    def token_index(self, frames: list[int]) -> torch.Tensor:
        t = self.tokens_per_frame
        index = [f * t + i for f in frames for i in range(t)]
        return torch.tensor(index, dtype=torch.long, device=self.device)

    def stage(self, layer: int, start_frames: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """Hold the fresh K/V of a forward's rows ([rows, tokens, heads, dim]) until commit."""
        self._staged.append((layer, start_frames, k.detach(), v.detach()))

    def commit(self) -> list[tuple[int, int]]:
        """Write staged K/V into their frame slots; returns the (start, count) ranges written."""
        written = set()
        for layer, start_frames, k, v in self._staged:
            count = k.shape[1] // self.tokens_per_frame
            for row, start in enumerate(start_frames):
                self._write(layer, self._cache_row(row, len(start_frames)), start, k[row], v[row])
                written.add((start, count))
        self._staged.clear()
        for start, count in written:
            for f in range(start, start + count):
                self.filled[f] = True
        return sorted(written)

    def discard_staged(self) -> None:
        self._staged.clear()

    def _cache_row(self, row: int, rows: int) -> int | slice:
        if self.batch_size == rows:
            return row
        if self.batch_size == 1:
            return 0
        raise ValueError(f"a forward of {rows} rows cannot write a cache of batch {self.batch_size}")

    def _write(self, layer: int, row, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        lo = start * self.tokens_per_frame
        hi = lo + k.shape[0]
        if start < 0 or hi > self.k.shape[2]:
            raise ValueError(f"frames from {start} do not fit a cache of {self.num_frames} frames")
        self.k[layer, row, lo:hi] = k.to(self.k.dtype)
        self.v[layer, row, lo:hi] = v.to(self.v.dtype)

    def read_frames(self, start: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of frames [start, start+count) of every layer: [layers, batch, tokens, heads, dim]."""
        lo, hi = start * self.tokens_per_frame, (start + count) * self.tokens_per_frame
        return self.k[:, :, lo:hi], self.v[:, :, lo:hi]

    def write_frames(self, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Commit K/V that another worker computed for frames starting at ``start``."""
        lo = start * self.tokens_per_frame
        hi = lo + k.shape[2]
        self.k[:, :, lo:hi] = k.to(device=self.device, dtype=self.k.dtype)
        self.v[:, :, lo:hi] = v.to(device=self.device, dtype=self.v.dtype)
        for f in range(start, start + k.shape[2] // self.tokens_per_frame):
            self.filled[f] = True

    def set_text(self, source: torch.Tensor) -> bool:
        """Point the cross-attention cache at a prompt embedding; True if it was already cached."""
        if self.text_source is source:
            return True
        self.text_builds += 1
        self.text_source = source
        self.text_context = None
        self.cross_kv.clear()
        return False

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

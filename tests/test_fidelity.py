"""Our runs against the originals' own inference loops, on a tiny random model with the same noise.

The references below are written from the upstream code, whose lines are cited as facts; they use
none of our cache, context plan, RoPE offsets, schedules or timestep code: each keeps its own K/V
buffer with the upstream slot arithmetic, rotates with Wan's complex RoPE in float64 and takes
its timesteps from the originals' float32 grid. Only the transformer's weights and modules (its
projections, norms, modulation and feed-forward) are shared, under attention processors of the
reference's own. Ours runs on the local and batched executors and on a pool's tokens placement
(2 workers, Ulysses attention); Rolling Forcing also on 3 torchrun ranks of Ring attention.

- Rolling Forcing (TencentARC/RollingForcing): ``pipeline/rolling_forcing_inference.py``,
  ``inference_rolling_forcing``: windows of up to 5 blocks at staggered timesteps in one forward,
  then a separate ``updating_cache=True`` forward of the window's first block at t = 0; and
  ``wan/modules/causal_model.py``, ``CausalWanSelfAttention.forward``: a 24-frame K/V buffer whose
  first block is kept un-rotated as an anchor, a working cache of at most 21 frames in all, the
  anchor rotated to ``current_start_frame - working_cache_frame_length - 3``, and cache passes
  that read the last 21 frames of the buffer.
- Self-Forcing (guandeh17/Self-Forcing), CausVid and LongLive single-prompt: ``pipeline/
  causal_inference.py``, ``inference``: per block, the denoising steps, then one forward at
  t = 0 (``context_noise`` 0) of the block's x0; ``wan/modules/causal_model.py``: every forward
  writes its own K/V into the buffer (rolled past ``sink_size`` when full), then attends to the
  last ``max_attention_size`` tokens of it (LongLive: its sinks plus the most recent tokens).
- LongLive's prompt switch (NVlabs/LongLive): ``pipeline/interactive_causal_inference.py``,
  ``_recache_after_switch`` with its configuration's ``global_sink: true``: the cross-attention
  cache reset, then the last min(``local_attn_size``, frames so far) frames of the output once
  more at t = 0 under the new prompt in one forward; ``causal_model.py`` keeps the sink slots in
  such a recompute (``is_recompute``: it ends where the cache ends and starts after frame 0).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cascade.backend import LocalExecutor
from cascade.backend.local import torch_threads
from cascade.backend.pool import DistributedExecutor
from cascade.model.base import LatentLayout
from cascade.model.checkpoints import HUB_PRESETS
from cascade.model.kv_cache import KVCache
from cascade.pipeline import DenoiseJob
from cascade.sampling import item_noise
from cascade.schedule import make_schedule
from hub_standins import TINY_TRANSFORMER, random_generator

LATENT = (4, 4)  # latent height and width: 2×2 patches of 2×2 → 4 tokens per frame
BLOCK = 3  # latent frames per block
LAYOUT = LatentLayout(TINY_TRANSFORMER["in_channels"], BLOCK, *LATENT)
SEED = 5
BAR = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def fidelity_transformer():
    """The tiny random generator every comparison here runs."""
    model = random_generator(31)
    model.sinusoid_dtype = torch.float64  # as the presets run (the original Wan's sinusoid)
    return model


def prompt_embedding() -> torch.Tensor:
    return torch.randn(1, 8, TINY_TRANSFORMER["text_dim"], generator=torch.Generator().manual_seed(2))


@dataclass(frozen=True)
class FidelityLoader:
    """A pool worker's replica of ``fidelity_transformer`` (picklable)."""

    def __call__(self, device: torch.device):
        return fidelity_transformer().to(device)


@pytest.fixture(scope="module")
def transformer():
    return fidelity_transformer()


@pytest.fixture(scope="module")
def text():
    return prompt_embedding()


@pytest.fixture(scope="module")
def pool():
    """Two workers on the tokens placement: Ulysses attention, the tiny model's 2 heads one each."""
    with DistributedExecutor(FidelityLoader(), workers=2, threads_per_worker=1) as executor:
        yield executor.placed("tokens")


ONE_DEVICE = {"local": LocalExecutor(), "batched": LocalExecutor(batched=True)}


@pytest.fixture
def executor(request):
    """The executor a test names: one device, one item at a time or batched, or the pool."""
    return request.getfixturevalue("pool") if request.param == "pool" else ONE_DEVICE[request.param]


# ----------------------------------------------------------------------------- upstream pieces

def upstream_grid(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``utils/scheduler.py``: ``FlowMatchScheduler(shift, sigma_min=0.0, extra_one_step=True)``
    then ``set_timesteps(1000, training=True)``: (timesteps, sigmas), float32."""
    sigmas = torch.linspace(1.0, 0.0, 1001)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas * 1000, sigmas


def upstream_steps(steps, shift: float, warp: bool) -> torch.Tensor:
    """The pipeline's ``denoising_step_list``: with ``warp_denoising_step``, the grid's timesteps
    (a 0 appended) at 1000 − step; else the listed integers."""
    listed = torch.tensor(steps, dtype=torch.long)
    if not warp:
        return listed
    timesteps, _ = upstream_grid(shift)
    return torch.cat([timesteps, torch.tensor([0.0])])[1000 - listed]


def upstream_sigma(t: torch.Tensor, shift: float) -> torch.Tensor:
    """σ at the grid's timestep nearest ``t`` (``_convert_flow_pred_to_x0`` and ``add_noise``)."""
    timesteps, sigmas = upstream_grid(shift)
    return sigmas[(timesteps.double() - float(t)).abs().argmin()]


def flow_to_x0(flow: torch.Tensor, x: torch.Tensor, t, shift: float) -> torch.Tensor:
    """``WanDiffusionWrapper._convert_flow_pred_to_x0``: in float64, x0 = x_t − σ·flow."""
    return (x.double() - upstream_sigma(t, shift).double() * flow.double()).to(x.dtype)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, t, shift: float) -> torch.Tensor:
    sigma = upstream_sigma(t, shift)
    return ((1 - sigma) * x0 + sigma * noise).type_as(noise)


def rope_frequencies(head_dim: int, length: int = 64, theta: float = 10000.0) -> list[torch.Tensor]:
    """``wan/modules/model.py`` ``rope_params`` for the frame, height and width parts of a head."""
    parts = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    out = []
    for dim in parts:
        angles = torch.outer(torch.arange(length, dtype=torch.float64),
                             1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        out.append(torch.polar(torch.ones_like(angles), angles))
    return out


def causal_rope(x: torch.Tensor, grid: tuple[int, int, int], start_frame: int, freqs) -> torch.Tensor:
    """``causal_rope_apply``: adjacent channel pairs as complex numbers times the frame, height
    and width rotations, frames counted from ``start_frame``; in float64."""
    f, h, w = grid
    t_part, h_part, w_part = freqs
    table = torch.cat([t_part[start_frame:start_frame + f].view(f, 1, 1, -1).expand(f, h, w, -1),
                       h_part[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                       w_part[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(f * h * w, 1, -1)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:3], -1, 2))
    return torch.view_as_real(pairs * table).flatten(3).type_as(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain attention over [B, S, heads, dim] (``wan/modules/attention.py``, no mask)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@dataclass
class Call:
    """What one reference forward is: its first latent frame, whether it only updates the cache."""

    start_frame: int = 0
    updating_cache: bool = False
    grid: tuple[int, int, int] = (0, 0, 0)
    log: list = field(default_factory=list)  # layer 0's (kind, start, frames attended, anchor frame)


class CrossAttention:
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(-1, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(encoder_hidden_states)).unflatten(-1, (attn.heads, -1))
        v = attn.to_v(encoder_hidden_states).unflatten(-1, (attn.heads, -1))
        return attn.to_out[1](attn.to_out[0](attention(q, k, v).flatten(2)))


class Buffer:
    """One layer's K/V buffer of ``frames`` frames, with the frame each slot holds (for the log)."""

    def __init__(self, frames: int, tokens_per_frame: int, heads: int, head_dim: int):
        self.k = torch.zeros(1, frames * tokens_per_frame, heads, head_dim)
        self.v = torch.zeros_like(self.k)
        self.slot_frames: list[int | None] = [None] * frames
        self.global_end = self.local_end = 0  # in tokens
        self.tpf = tokens_per_frame

    def roll(self, sink: int, evicted: int, rolled: int) -> None:
        """Move ``rolled`` tokens after the sinks ``evicted`` tokens earlier (the oldest go)."""
        for buf in (self.k, self.v):
            buf[:, sink:sink + rolled] = buf[:, sink + evicted:sink + evicted + rolled].clone()
        f = self.slot_frames
        f[sink // self.tpf:(sink + rolled) // self.tpf] = f[(sink + evicted) // self.tpf:(sink + evicted + rolled) // self.tpf]

    def write(self, lo: int, hi: int, k: torch.Tensor, v: torch.Tensor, first_frame: int) -> None:
        self.k[:, lo:hi], self.v[:, lo:hi] = k, v
        self.slot_frames[lo // self.tpf:hi // self.tpf] = range(first_frame, first_frame + (hi - lo) // self.tpf)

    def frames(self, lo: int, hi: int) -> list[int]:
        return list(self.slot_frames[lo // self.tpf:hi // self.tpf])


class SelfAttention:
    """Base of the references' self-attention: Wan's q, k, v rotated from the call's start frame."""

    def __init__(self, layer: int, call: Call, buffer: Buffer, freqs):
        self.layer, self.call, self.buffer, self.freqs = layer, call, buffer, freqs

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(-1, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(hidden_states)).unflatten(-1, (attn.heads, -1))
        v = attn.to_v(hidden_states).unflatten(-1, (attn.heads, -1))
        call = self.call
        roped_q = causal_rope(q, call.grid, call.start_frame, self.freqs)
        roped_k = causal_rope(k, call.grid, call.start_frame, self.freqs)
        out = self.attend(roped_q, k, roped_k, v)
        return attn.to_out[1](attn.to_out[0](out.flatten(2)))

    def note(self, kind: str, frames, anchor_frame=None) -> None:
        if self.layer == 0:
            self.call.log.append((kind, self.call.start_frame, frozenset(frames), anchor_frame))


class RollingForcingSelfAttention(SelfAttention):
    """``CausalWanSelfAttention.forward`` of Rolling Forcing with its cache (``kv_cache`` given)."""

    BUFFER_FRAMES, MAX_ATTENTION_FRAMES = 24, 21  # kv_cache_size = 1560 * 24; max_attention_size = 21 * 1560

    def attend(self, roped_q, k, roped_k, v):
        buf, call, tpf = self.buffer, self.call, self.buffer.tpf
        block, max_attention = BLOCK * tpf, self.MAX_ATTENTION_FRAMES * tpf
        own = range(call.start_frame, call.start_frame + call.grid[0])
        # "only caching the first block"
        cache_end = call.start_frame * tpf + block
        new = cache_end - buf.global_end
        if new > 0 and new + buf.local_end > buf.k.shape[1]:
            evicted = new + buf.local_end - buf.k.shape[1]
            buf.roll(block, evicted, buf.local_end - evicted - block)  # the first block stays
            local_end = buf.local_end + cache_end - buf.global_end - evicted
            start = local_end - block
            buf.write(start, local_end, roped_k[:, :block], v[:, :block], call.start_frame)
        else:
            local_end = buf.local_end + cache_end - buf.global_end
            start = local_end - block
            # the first block is kept un-rotated
            buf.write(start, local_end, (k if start == 0 else roped_k)[:, :block], v[:, :block], call.start_frame)
        if new > 0:
            buf.global_end, buf.local_end = cache_end, local_end
        if start == 0:  # no cache to attend to: the forward among itself
            self.note("cache pass" if call.updating_cache else "window", own)
            return attention(roped_q, roped_k, v)
        if call.updating_cache:  # the last 21 frames of the buffer, itself among them
            lo = max(0, local_end - max_attention)
            keys = buf.k[:, lo:local_end].clone()
            if lo == 0:  # the anchor at its own place
                keys[:, :block] = causal_rope(keys[:, :block], (BLOCK, *call.grid[1:]), 0, self.freqs)
            self.note("cache pass", buf.frames(lo, local_end), 0 if lo == 0 else None)
            return attention(roped_q, keys, buf.v[:, lo:local_end])
        working_max = max_attention - roped_q.shape[1] - block
        lo = max(block, start - working_max)  # the working cache leaves the anchor out
        working_frames = (start - lo) // tpf
        anchor_frame = call.start_frame - working_frames - 3  # rope_start_frame
        anchor = causal_rope(buf.k[:, :block], (BLOCK, *call.grid[1:]), anchor_frame, self.freqs)
        self.note("window", [*buf.frames(0, block), *buf.frames(lo, start), *own], anchor_frame)
        return attention(roped_q, torch.cat([anchor, buf.k[:, lo:start], roped_k], dim=1),
                         torch.cat([buf.v[:, :block], buf.v[:, lo:start], v], dim=1))


class SelfForcingSelfAttention(SelfAttention):
    """``CausalWanSelfAttention.forward`` of Self-Forcing (global: ``local_attn_size`` −1, a
    32760-token = 21-frame buffer) and LongLive (``local_attn_size`` 12, ``sink_size`` 3): write
    the forward's own K/V (rolling past the sinks when full), then attend to the sinks and the
    most recent tokens, ``max_attention_size`` in all."""

    def __init__(self, layer, call, buffer, freqs, rolling: bool, sink_frames: int):
        super().__init__(layer, call, buffer, freqs)
        self.rolling, self.sink = rolling, sink_frames * buffer.tpf

    def attend(self, roped_q, k, roped_k, v):
        buf, call = self.buffer, self.call
        new = roped_q.shape[1]
        current_end = call.start_frame * buf.tpf + new
        size = buf.k.shape[1]
        recompute = current_end <= buf.global_end and call.start_frame > 0
        if self.rolling and current_end > buf.global_end and new + buf.local_end > size:
            evicted = new + buf.local_end - size
            buf.roll(self.sink, evicted, buf.local_end - evicted - self.sink)
            local_end = buf.local_end + current_end - buf.global_end - evicted
        else:
            local_end = buf.local_end + current_end - buf.global_end
        start = local_end - new
        write = max(start, self.sink) if recompute else start  # the sink slots are kept in a recompute
        if write < local_end:
            skipped = (write - start) // buf.tpf
            buf.write(write, local_end, roped_k[:, write - start:], v[:, write - start:], call.start_frame + skipped)
        budget = size  # max_attention_size: the buffer's size in both
        if self.sink:  # LongLive: the sinks, then the most recent tokens within the budget
            lo = max(self.sink, local_end - (budget - self.sink))
            keys = torch.cat([buf.k[:, :self.sink], buf.k[:, lo:local_end]], dim=1)
            values = torch.cat([buf.v[:, :self.sink], buf.v[:, lo:local_end]], dim=1)
            frames = buf.frames(0, self.sink) + buf.frames(lo, local_end)
        else:
            lo = max(0, local_end - budget)
            keys, values, frames = buf.k[:, lo:local_end], buf.v[:, lo:local_end], buf.frames(lo, local_end)
        buf.global_end, buf.local_end = current_end, local_end
        self.note("cache pass" if call.updating_cache else "step", frames)
        return attention(roped_q, keys, values)


class Reference:
    """The transformer's weights under the reference's processors, and its forward."""

    def __init__(self, transformer, text, make_self_attention, buffer_frames: int):
        self.model = copy.deepcopy(transformer)
        self.text = text
        self.call = Call()
        config = self.model.config
        freqs = rope_frequencies(config.attention_head_dim)
        tpf = (LATENT[0] // config.patch_size[1]) * (LATENT[1] // config.patch_size[2])
        for layer, block in enumerate(self.model.blocks):
            buffer = Buffer(buffer_frames, tpf, config.num_attention_heads, config.attention_head_dim)
            block.attn1.set_processor(make_self_attention(layer, self.call, buffer, freqs))
            block.attn2.set_processor(CrossAttention())

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timestep_per_frame: torch.Tensor, start_frame: int,
                 updating_cache: bool = False, text: torch.Tensor | None = None) -> torch.Tensor:
        frames = x.shape[2]
        patch = self.model.config.patch_size
        self.call.start_frame, self.call.updating_cache = start_frame, updating_cache
        self.call.grid = (frames, LATENT[0] // patch[1], LATENT[1] // patch[2])
        t = timestep_per_frame.float().expand(1, frames)
        return self.model(x, t, self.text if text is None else text).sample


def noise(block: int, step: int) -> torch.Tensor:
    """The same noise on both sides: ours draws the input of block b's step k from (seed, b, k)."""
    return item_noise(SEED, block, step, LAYOUT.block_shape())


# ----------------------------------------------------------------------------- Rolling Forcing

def rolling_forcing_reference(transformer, text, blocks: int) -> tuple[torch.Tensor, list]:
    """``inference_rolling_forcing`` on ``blocks`` blocks: the latents [1, C, F, H, W] and the log."""
    preset = HUB_PRESETS["rolling-forcing-1.3b"]
    steps = upstream_steps(preset.timesteps, preset.shift, preset.warp)
    n = len(steps)  # rolling_window_length_blocks = num_denoising_steps
    reference = Reference(transformer, text, RollingForcingSelfAttention, RollingForcingSelfAttention.BUFFER_FRAMES)
    noisy, output = {}, {}
    for window in range(blocks + n - 1):
        first, last = max(0, window - n + 1), min(blocks - 1, window)
        members = range(first, last + 1)
        x = torch.cat([noise(b, 0) if b == window else noisy[b] for b in members], dim=2)
        # shared_timestep: the window's oldest block at the last step, its newest at the first
        t = torch.cat([steps[window - b].float().repeat(BLOCK) for b in members])[None]
        flow = reference(x, t, first * BLOCK)
        for i, b in enumerate(members):
            step = window - b
            part = slice(i * BLOCK, (i + 1) * BLOCK)
            x0 = flow_to_x0(flow[:, :, part], x[:, :, part], steps[step], preset.shift)
            output[b] = x0
            if step < n - 1:
                noisy[b] = add_noise(x0, noise(b, step + 1), steps[step + 1], preset.shift)
        # "only cache the first block": its x0 again at t = 0 (context_noise), updating_cache=True
        reference(output[first], torch.zeros(1, BLOCK), first * BLOCK, updating_cache=True)
    return torch.cat([output[b] for b in range(blocks)], dim=2), reference.call.log


def rolling_forcing_job(transformer, text, blocks: int, **changes) -> DenoiseJob:
    preset = HUB_PRESETS["rolling-forcing-1.3b"]
    settings = dict(transformer=transformer, text=text, sampler=preset.sampler(), layout=LAYOUT, num_blocks=blocks,
                    seed=SEED, joint=True, local_window=preset.local_window, sink_frames=preset.sink_frames,
                    rolling_anchor=preset.rolling_anchor)
    return DenoiseJob(**{**settings, **changes})


def rolling_forcing_schedule(blocks: int):
    defaults = HUB_PRESETS["rolling-forcing-1.3b"].run_defaults
    return make_schedule(blocks, 5, window=defaults["window"], stride=defaults["stride"], recache=defaults["recache"],
                         joint=defaults["joint"])


def ours(job: DenoiseJob, schedule, executor) -> torch.Tensor:
    return torch.cat(executor.execute(job, schedule).latents, dim=2)


@pytest.mark.parametrize("blocks", [7, 10])
@pytest.mark.parametrize("executor", ["local", "batched", "pool"], indirect=True)
def test_rolling_forcing_equals_its_own_inference_loop(transformer, text, blocks, executor):
    """On the pool, every worker runs each window as one forward on its share of the tokens."""
    expected, _ = rolling_forcing_reference(transformer, text, blocks)
    job, schedule = rolling_forcing_job(transformer, text, blocks), rolling_forcing_schedule(blocks)
    result = executor.execute(job, schedule)
    got = torch.cat(result.latents, dim=2)
    assert got.shape == expected.shape == (1, LAYOUT.channels, BLOCK * blocks, *LATENT)
    assert (got - expected).abs().max().item() <= BAR
    assert result.model_calls == schedule.num_ticks  # a tick, one forward
    if executor.name != "local":
        assert (got - ours(job, schedule, LocalExecutor())).abs().max().item() <= BAR


RING_RANKS = """
import sys

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, sys.argv[1])
from cascade.backend.rank import RankExecutor
from test_fidelity import fidelity_transformer, prompt_embedding, rolling_forcing_job, rolling_forcing_schedule

dist.init_process_group("gloo")
blocks = int(sys.argv[3])
job = rolling_forcing_job(fidelity_transformer(), prompt_embedding(), blocks)
result = RankExecutor("cpu", placement="tokens").execute(job, rolling_forcing_schedule(blocks))
if dist.get_rank() == 0:
    np.save(sys.argv[2], torch.cat(result.latents, dim=2).numpy())
dist.barrier()  # no rank tears its groups down while another still writes
dist.destroy_process_group()
"""


def test_rolling_forcing_on_three_ranks_of_ring_attention(transformer, text, tmp_path):
    """Ring attention on 3 torchrun ranks (the 2 heads do not divide by 3), each frame's 4 tokens
    shared 2, 1, 1: each rank keeps, and at 10 blocks rotates, its own tokens of the anchor."""
    blocks, tests = 10, Path(__file__).resolve().parent
    script, out = tmp_path / "ranks.py", tmp_path / "latents.npy"
    script.write_text(RING_RANKS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3", str(script),
               str(tests), str(out), str(blocks)]
    env = {**os.environ, "PYTHONPATH": str(tests.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tests.parent, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.from_numpy(np.load(out))
    local = ours(rolling_forcing_job(transformer, text, blocks), rolling_forcing_schedule(blocks), LocalExecutor())
    assert (got - local).abs().max().item() <= BAR


def test_rolling_forcing_attends_where_its_loop_does(transformer, text):
    """Which frames each forward of the original loop attends to, and where its anchor sits, at
    16 blocks (the page's most): the same as our cache's rules say for the same forward."""
    _, log = rolling_forcing_reference(transformer, text, 16)
    cache = KVCache(1, 16 * BLOCK, 1, 1, 1, local_window=18, sink_frames=3, rolling_anchor=True)
    cache.filled = [True] * cache.num_frames
    windows = iter(range(16 + 4))
    anchors_moved = 0
    for kind, start, frames, anchor in log:
        if kind == "window":
            window = next(windows)
            count = BLOCK * (min(15, window) - start // BLOCK + 1)
        else:
            count = BLOCK
        passing = kind == "cache pass"
        own = set(range(start, start + count))
        assert frames == set(cache.context_frames(start, count, cache_pass=passing)) | own, (kind, start)
        if anchor is not None:
            assert anchor == cache.sink_shift(start, count, cache_pass=passing), (kind, start)
            anchors_moved += anchor > 0
    cache_passes = [(start, frames) for kind, start, frames, _ in log if kind == "cache pass"]
    assert all(frames == set(range(max(0, start + 3 - 21), start + 3)) for start, frames in cache_passes)
    assert anchors_moved > 0  # from block 8 on, the anchor sits right before the working cache


def test_a_cache_pass_is_its_own_forward(transformer, text):
    """A joint schedule gives the finished block's t = 0 pass a tick of its own, right before the
    window's denoising steps; a joint forward that mixes the two is refused."""
    schedule = rolling_forcing_schedule(8)
    for tick in schedule.ticks:
        assert all(item.is_denoising for item in tick) or len(tick) == 1
    recaches = [i for i, tick in enumerate(schedule.ticks) if not tick[0].is_denoising]
    assert [schedule.ticks[i][0].block for i in recaches] == list(range(7))
    assert all(schedule.ticks[i + 1][0].block == schedule.ticks[i][0].block + 1 for i in recaches)
    mixed = make_schedule(8, 5, window=6, stride=1, recache=True)
    with pytest.raises(ValueError, match="denoising steps or cache passes, not both"):
        ours(rolling_forcing_job(transformer, text, 8), mixed, LocalExecutor())


# ----------------------------------------------------------------------------- the Self-Forcing family

def self_forcing_reference(transformer, text, name: str, blocks: int, switch: tuple[int, torch.Tensor] | None = None
                           ) -> torch.Tensor:
    """``CausalInferencePipeline.inference`` for the preset ``name``: per block its steps,
    re-noising x0 to the next step, then its x0 at t = 0 into the cache. ``switch``: (block, new
    prompt's embedding), LongLive's ``_recache_after_switch`` before that block."""
    preset = HUB_PRESETS[name]
    steps = upstream_steps(preset.timesteps, preset.shift, preset.warp)
    if preset.local_window is None:  # global: the 32760-token buffer, no rolling
        frames, make = 21, lambda *a: SelfForcingSelfAttention(*a, rolling=False, sink_frames=0)
    else:  # local_attn_size frames, sinks included
        frames = preset.local_window + preset.sink_frames
        make = lambda *a: SelfForcingSelfAttention(*a, rolling=True, sink_frames=preset.sink_frames)
    reference = Reference(transformer, text, make, frames)
    output = []
    for b in range(blocks):
        if switch is not None and b == switch[0]:
            text, end = switch[1], b * BLOCK
            recached = min(preset.local_window + preset.sink_frames, end)
            video = torch.cat(output, dim=2)[:, :, end - recached:end]
            reference(video, torch.zeros(1, recached), end - recached, updating_cache=True, text=text)
        x = noise(b, 0)
        for index, t in enumerate(steps):
            flow = reference(x, t.float().repeat(BLOCK)[None], b * BLOCK, text=text)
            x0 = flow_to_x0(flow, x, t, preset.shift)
            if index < len(steps) - 1:
                x = add_noise(x0, noise(b, index + 1), steps[index + 1], preset.shift)
        output.append(x0)
        if b < blocks - 1:  # the last block's pass writes K/V nobody reads
            reference(x0, torch.zeros(1, BLOCK), b * BLOCK, updating_cache=True, text=text)
    return torch.cat(output, dim=2)


@pytest.mark.parametrize("name,blocks", [("self-forcing-1.3b", 7), ("self-forcing-1.3b", 10), ("causvid-1.3b", 7),
                                         ("longlive-1.3b", 7), ("longlive-1.3b", 10)])
def test_the_self_forcing_family_equals_its_own_inference_loop(transformer, text, name, blocks):
    """Past 7 blocks, Self-Forcing's rolling cache of 21 frames; CausVid stops at 7 (its cap)."""
    preset = HUB_PRESETS[name]
    expected = self_forcing_reference(transformer, text, name, blocks)
    job = DenoiseJob(transformer=transformer, text=text, sampler=preset.sampler(), layout=LAYOUT, num_blocks=blocks,
                     seed=SEED, local_window=preset.local_window, sink_frames=preset.sink_frames)
    got = ours(job, make_schedule(blocks, len(preset.timesteps)), LocalExecutor())
    assert (got - expected).abs().max().item() <= BAR


@pytest.mark.parametrize("switch_block", [3, 5, 8], ids=["at 9 frames", "at 15 frames", "at 24 frames"])
def test_longlive_switches_prompts_as_its_own_loop_does(transformer, text, pool, switch_block):
    """The switch pass: the last min(12, frames so far) frames at t = 0 under the new prompt in one
    forward, attending to each other both ways; past 12 frames the sinks keep their K/V. The pool
    runs it on its tokens placement, every worker the whole pass on its share of the tokens."""
    from types import SimpleNamespace

    from cascade.pipeline import switch_recache_blocks

    preset, blocks = HUB_PRESETS["longlive-1.3b"], 10
    new_prompt = torch.randn(1, 8, TINY_TRANSFORMER["text_dim"], generator=torch.Generator().manual_seed(9))
    expected = self_forcing_reference(transformer, text, "longlive-1.3b", blocks, switch=(switch_block, new_prompt))
    shape = SimpleNamespace(layout=LAYOUT, local_window=preset.local_window, sink_frames=preset.sink_frames)
    passed = switch_recache_blocks(shape, switch_block)
    schedule = make_schedule(blocks, 4, switch_recache={switch_block: passed})
    assert [list(tick) for tick in schedule.ticks if tick[0].switch is not None] == [
        [item for item in schedule.switch_items(switch_block)]]  # one tick, one forward
    for executor in (*ONE_DEVICE.values(), pool):
        job = DenoiseJob(transformer=transformer, text=torch.cat([text, new_prompt]), sampler=preset.sampler(),
                         layout=LAYOUT, num_blocks=blocks, seed=SEED, local_window=preset.local_window,
                         sink_frames=preset.sink_frames, prompts=schedule.item_prompts([switch_block]))
        got = ours(job, schedule, executor)
        assert (got - expected).abs().max().item() <= BAR

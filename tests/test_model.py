"""CausalWanTransformer against diffusers' WanTransformer3DModel as the oracle (tiny, float32)."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from cascade.model import CausalWanTransformer

TINY = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=4,
    out_channels=4,
    text_dim=24,
    freq_dim=16,
    ffn_dim=48,
    num_layers=2,
    cross_attn_norm=True,
    rope_max_seq_len=64,
)
FRAMES_PER_BLOCK = 3
TOKENS_PER_FRAME = 16  # 8x8 latent, patch 2x2


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    reference = WanTransformer3DModel(**TINY).eval()
    causal = CausalWanTransformer(**TINY).eval()
    causal.load_state_dict(reference.state_dict())
    return reference, causal


def test_state_dict_keys_and_config_match_diffusers(models):
    reference, causal = models
    assert list(causal.state_dict()) == list(reference.state_dict())
    rebuilt = CausalWanTransformer.from_config(reference.config)
    assert rebuilt.config.num_layers == TINY["num_layers"]
    assert rebuilt.config.attention_head_dim == TINY["attention_head_dim"]


def frame_mask(num_frames: int, visible) -> torch.Tensor:
    """Token-level mask from a frame-level rule visible(query_frame, key_frame)."""
    frames = torch.arange(num_frames).repeat_interleave(TOKENS_PER_FRAME)
    return torch.tensor([[visible(int(q), int(k)) for k in frames] for q in frames])


def block_causal(q: int, k: int) -> bool:
    return k // FRAMES_PER_BLOCK <= q // FRAMES_PER_BLOCK


@torch.no_grad()
def test_no_cache_equals_diffusers(models):
    reference, causal = models
    x, text = torch.randn(2, 4, 6, 8, 8), torch.randn(2, 7, 24)
    t = torch.tensor([812.0, 125.0])
    diff = (reference(x, t, text).sample - causal(x, t, text).sample).abs().max().item()
    assert diff <= 1e-5


@torch.no_grad()
def test_per_frame_timesteps_all_equal_equal_scalar_timestep(models):
    _, causal = models
    x, text = torch.randn(2, 4, 6, 8, 8), torch.randn(2, 7, 24)
    scalar = causal(x, torch.tensor([640.0, 90.0]), text).sample
    per_frame = causal(x, torch.tensor([[640.0] * 6, [90.0] * 6]), text).sample
    assert (scalar - per_frame).abs().max().item() <= 1e-5


@torch.no_grad()
def test_per_frame_timesteps_change_only_their_frames_modulation(models):
    _, causal = models
    x, text = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 7, 24)
    mixed = torch.tensor([[900.0, 500.0, 100.0]])
    out = causal(x, mixed, text).sample
    # with full attention every frame depends on every other; check frame 0's own modulation
    # by comparing against a forward where every frame has frame 0's timestep
    same = causal(x, torch.full((1, 3), 900.0), text).sample
    assert not torch.allclose(out, same)
    with pytest.raises(ValueError, match="per-frame timestep"):
        causal(x, torch.full((1, 4), 900.0), text)


def run_blocks_through_cache(causal, x, t, text, **cache_options):
    num_frames = x.shape[2]
    cache = causal.new_kv_cache(num_frames, 8, 8, **cache_options)
    outputs = []
    for start in range(0, num_frames, FRAMES_PER_BLOCK):
        block = x[:, :, start : start + FRAMES_PER_BLOCK]
        outputs.append(causal(block, t[:, start : start + FRAMES_PER_BLOCK], text, kv_cache=cache, start_frame=start).sample)
        cache.commit()
    return torch.cat(outputs, dim=2), cache


@torch.no_grad()
def test_blocks_through_cache_equal_block_causal_full_forward(models):
    _, causal = models
    x, text = torch.randn(1, 4, 12, 8, 8), torch.randn(1, 7, 24)
    t = torch.linspace(900, 100, 12)[None]
    cached, cache = run_blocks_through_cache(causal, x, t, text)
    full = causal(x, t, text, attention_mask=frame_mask(12, block_causal)).sample
    assert (cached - full).abs().max().item() <= 1e-5
    assert all(cache.filled) and len(cache.cross_kv) == TINY["num_layers"]


@torch.no_grad()
def test_one_text_per_frame_equals_one_text_per_row(models):
    _, causal = models
    x, text = torch.randn(2, 4, 6, 8, 8), torch.randn(2, 7, 24)
    t = torch.tensor([812.0, 125.0])
    per_frame = text[:, None].expand(-1, 6, -1, -1)
    diff = (causal(x, t, per_frame).sample - causal(x, t, text).sample).abs().max().item()
    assert diff <= 1e-5


@torch.no_grad()
def test_a_text_per_block_equals_each_block_run_through_the_cache_under_its_own_prompt(models):
    """How training shows a prompt switch (one caption per block, one forward) against how
    inference runs it (each block under its own prompt, earlier blocks' K/V as committed)."""
    _, causal = models
    x, t = torch.randn(1, 4, 9, 8, 8), torch.linspace(900, 100, 9)[None]
    texts = [torch.randn(1, 7, 24) for _ in range(3)]
    cache = causal.new_kv_cache(9, 8, 8)
    blocks = []
    for block, text in enumerate(texts):
        frames = slice(block * FRAMES_PER_BLOCK, (block + 1) * FRAMES_PER_BLOCK)
        blocks.append(causal(x[:, :, frames], t[:, frames], text, kv_cache=cache, start_frame=frames.start).sample)
        cache.commit()
    per_frame = torch.cat(texts).repeat_interleave(FRAMES_PER_BLOCK, dim=0)[None]
    full = causal(x, t, per_frame, attention_mask=frame_mask(9, block_causal)).sample
    assert (torch.cat(blocks, dim=2) - full).abs().max().item() <= 1e-5
    one_prompt = causal(x, t, texts[0], attention_mask=frame_mask(9, block_causal)).sample
    assert (full[:, :, :3] - one_prompt[:, :, :3]).abs().max().item() <= 1e-5
    assert (full[:, :, 3:] - one_prompt[:, :, 3:]).abs().max().item() > 1e-3


def test_a_text_per_frame_needs_a_cache_free_forward_and_one_text_per_frame(models):
    _, causal = models
    x, t = torch.randn(1, 4, 3, 8, 8), torch.tensor([1.0])
    with pytest.raises(ValueError, match=r"a text per frame must be \[1, 3, L, D\].*with a kv_cache"):
        causal(x, t, torch.randn(1, 3, 7, 24), kv_cache=causal.new_kv_cache(3, 8, 8))
    with pytest.raises(ValueError, match=r"a text per frame must be \[1, 3, L, D\] in a cache-free forward, got \[1, 2, 7, 24\]"):
        causal(x, t, torch.randn(1, 2, 7, 24))


@torch.no_grad()
def test_local_window_with_sink_equals_masked_full_forward(models):
    _, causal = models
    x, text = torch.randn(1, 4, 15, 8, 8), torch.randn(1, 7, 24)
    t = torch.full((1, 15), 500.0)
    window, sink = 7, 2

    def visible(q: int, k: int) -> bool:
        block_start = q // FRAMES_PER_BLOCK * FRAMES_PER_BLOCK
        block_end = block_start + FRAMES_PER_BLOCK
        own_block = block_start <= k < block_end
        earlier = k < block_start and (k >= block_end - window or k < sink)
        return own_block or earlier

    cached, _ = run_blocks_through_cache(causal, x, t, text, local_window=window, sink_frames=sink)
    full = causal(x, t, text, attention_mask=frame_mask(15, visible)).sample
    assert (cached - full).abs().max().item() <= 1e-5
    unwindowed = causal(x, t, text, attention_mask=frame_mask(15, block_causal)).sample
    assert (cached - unwindowed).abs().max().item() > 1e-3


@torch.no_grad()
def test_rows_at_different_frames_equal_separate_forwards(models):
    """The batched executor's form: rows of one forward start at different frames."""
    _, causal = models
    x, text = torch.randn(1, 4, 9, 8, 8), torch.randn(1, 7, 24)
    cache = causal.new_kv_cache(9, 8, 8)
    causal(x[:, :, :3], torch.tensor([0.0]), text, kv_cache=cache, start_frame=0)
    cache.commit()
    rows = torch.cat([x[:, :, 3:6], x[:, :, 6:9]])
    t = torch.tensor([700.0, 300.0])
    together = causal(rows, t, text, kv_cache=cache, start_frame=[3, 6]).sample
    cache.discard_staged()
    alone = [causal(rows[i : i + 1], t[i : i + 1], text, kv_cache=cache, start_frame=s).sample for i, s in enumerate([3, 6])]
    cache.discard_staged()
    assert (together - torch.cat(alone)).abs().max().item() <= 1e-5


@torch.no_grad()
def test_staged_kv_is_invisible_until_commit(models):
    _, causal = models
    x, text = torch.randn(1, 4, 6, 8, 8), torch.randn(1, 7, 24)
    cache = causal.new_kv_cache(6, 8, 8)
    t = torch.tensor([500.0])
    causal(x[:, :, :3], t, text, kv_cache=cache, start_frame=0)
    before_commit = causal(x[:, :, 3:], t, text, kv_cache=cache, start_frame=3).sample
    alone = causal(x[:, :, 3:], t, text, start_frame=3).sample  # no context at all
    assert (before_commit - alone).abs().max().item() <= 1e-5
    cache.commit()
    assert cache.filled == [True] * 6
    after_commit = causal(x[:, :, 3:], t, text, kv_cache=cache, start_frame=3).sample
    assert (after_commit - alone).abs().max().item() > 1e-3


@torch.no_grad()
def test_prompt_switch_replaces_cross_attention_cache_only(models):
    _, causal = models
    x = torch.randn(1, 4, 3, 8, 8)
    first, second = torch.randn(1, 7, 24), torch.randn(1, 7, 24)
    cache = causal.new_kv_cache(6, 8, 8)
    t = torch.tensor([500.0])
    causal(x, t, first, kv_cache=cache, start_frame=0)
    cache.commit()
    switched = causal(x, t, second, kv_cache=cache, start_frame=3).sample
    fresh = causal.new_kv_cache(6, 8, 8)
    causal(x, t, first, kv_cache=fresh, start_frame=0)
    fresh.commit()
    fresh.set_text(second)
    expected = causal(x, t, second, kv_cache=fresh, start_frame=3).sample
    assert (switched - expected).abs().max().item() <= 1e-6
    assert cache.text_source is second


@torch.no_grad()
def test_a_reused_cache_is_emptied_and_behaves_as_new(models):
    _, causal = models
    x, t = torch.randn(1, 4, 6, 8, 8), torch.tensor([500.0])
    first, second = torch.randn(1, 7, 24), torch.randn(1, 7, 24)

    def two_blocks(cache, text):
        causal(x[:, :, :3], t, text, kv_cache=cache, start_frame=0)
        cache.commit()
        return causal(x[:, :, 3:], t, text, kv_cache=cache, start_frame=3).sample

    used = causal.new_kv_cache(6, 8, 8)
    two_blocks(used, first)
    used.commit()
    reused = causal.new_kv_cache(6, 8, 8, reuse=used)
    assert reused is used and reused.filled == [False] * 6 and reused.text_source is None and not reused.cross_kv
    assert torch.equal(two_blocks(reused, second), two_blocks(causal.new_kv_cache(6, 8, 8), second))
    assert causal.new_kv_cache(9, 8, 8, reuse=used) is not used  # another geometry: a new cache
    assert causal.new_kv_cache(6, 8, 8, dtype=torch.float64, reuse=used) is not used


def test_mask_and_cache_together_is_an_error(models):
    _, causal = models
    cache = causal.new_kv_cache(3, 8, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        causal(torch.randn(1, 4, 3, 8, 8), torch.tensor([1.0]), torch.randn(1, 7, 24),
               kv_cache=cache, attention_mask=torch.ones(48, 48, dtype=torch.bool))

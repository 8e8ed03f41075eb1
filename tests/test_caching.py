"""BWCache on a tiny random CausalWanTransformer, driven through the real pipeline job and executors."""

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook

from cascade.backend import LocalExecutor
from cascade.backend.local import torch_threads
from cascade.caching import (BWCacheConfig, apply_bw_cache, bw_cache_stats, relative_l1, remove_bw_cache,
                             reset_bw_cache)
from cascade.model import CausalWanTransformer
from cascade.model.presets import LatentLayout
from cascade.pipeline import DenoiseJob
from cascade.sampling import FlowMatchSampler
from cascade.schedule import RECACHE, WorkItem, make_schedule

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
    text_dim=24, freq_dim=16, ffn_dim=48, num_layers=2, cross_attn_norm=True, rope_max_seq_len=64,
)
LAYOUT = LatentLayout(channels=4, frames_per_block=3, height=8, width=8)
BLOCKS = 3
FORCED = float("inf")  # every indicator value is below it: reuse wherever the rules allow

SCHEDULES = {
    "serial": lambda steps: make_schedule(BLOCKS, steps),
    "cascade": lambda steps: make_schedule(BLOCKS, steps, window=3, stride=1),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny forwards gain nothing from a second thread, and lose a lot when the cores are busy."""
    with torch_threads(1):
        yield


@pytest.fixture
def transformer():
    torch.manual_seed(0)
    model = CausalWanTransformer(**TINY).eval()
    yield model
    remove_bw_cache(model)


@pytest.fixture(scope="module")
def text():
    return torch.randn(1, 7, TINY["text_dim"], generator=torch.Generator().manual_seed(1))


def make_job(transformer, text, schedule, request_id="run", seed=0) -> DenoiseJob:
    sampler = FlowMatchSampler().with_steps(schedule.num_steps)
    return DenoiseJob(transformer, text, sampler, LAYOUT, schedule.num_blocks, seed=seed, request_id=request_id)


def run(transformer, text, schedule, batched=False, request_id="run", seed=0) -> torch.Tensor:
    job = make_job(transformer, text, schedule, request_id, seed)
    return torch.cat(LocalExecutor(batched=batched).execute(job, schedule).latents, dim=2)


class ComputedRows(ModelHook):
    """Records the row keys of the rows a transformer block really computes, in order."""

    def __init__(self, forward_state):
        super().__init__()
        self.forward_state = forward_state
        self.keys = []
        self.outputs = {}

    def post_forward(self, module, output):
        for row, key in enumerate(self.forward_state.row_keys):
            self.keys.append(key)
            self.outputs[key] = output[row : row + 1]
        return output


def spy_on_last_block(transformer) -> ComputedRows:
    """Registered before BWCache, so BWCache's hook wraps it and it sees only computed rows."""
    spy = ComputedRows(transformer.forward_state)
    HookRegistry.check_if_exists_or_initialize(transformer.blocks[-1]).register_hook(spy, "spy")
    return spy


def expected_computed(steps: int, reuse_interval: int | None = None, warmup: int = 1) -> list[int]:
    """The steps a forced indicator computes, written out by hand for the cases tested."""
    table = {
        (8, None, 1): [0, 1, 3, 5, 7],  # R = 1: reuse 2, 4, 6
        (16, None, 1): [0, 1, 4, 7, 10, 13, 15],  # R = 2; at 13 only ⌊2/2⌋ = 1 step may reuse
        (16, 3, 1): [0, 1, 5, 9, 13, 15],  # R = 3; at 13 only 1
        (8, None, 4): [0, 1, 2, 3, 5, 7],  # warmup 4, R = 1
    }
    return table[(steps, reuse_interval, warmup)]


def test_config_defaults_and_validation():
    assert [BWCacheConfig(steps).interval for steps in (4, 8, 16, 30)] == [1, 1, 2, 3]
    assert BWCacheConfig(16, reuse_interval=5).interval == 5
    assert [BWCacheConfig(16).reuse_span(k) for k in (1, 12, 13, 14, 15)] == [2, 1, 1, 0, 0]
    for bad in (dict(num_steps=0), dict(num_steps=4, threshold=-0.1), dict(num_steps=4, reuse_interval=0),
                dict(num_steps=4, warmup_steps=0), dict(num_steps=4, indicator_blocks=())):
        with pytest.raises(ValueError):
            BWCacheConfig(**bad)


def test_relative_l1_is_the_mean_over_blocks_of_the_relative_change():
    previous = {0: torch.tensor([[1.0, -1.0]]), 1: torch.tensor([[2.0, 2.0]])}
    current = {0: torch.tensor([[1.5, -1.0]]), 1: torch.tensor([[2.0, 1.0]])}
    assert relative_l1(current, previous) == pytest.approx((0.5 / 2 + 1 / 4) / 2)


@pytest.mark.parametrize("mode", SCHEDULES)
@pytest.mark.parametrize("batched", [False, True], ids=["local", "batched"])
def test_zero_threshold_gives_the_uncached_frames(transformer, text, mode, batched):
    schedule = SCHEDULES[mode](4)
    plain = run(transformer, text, schedule, batched)
    apply_bw_cache(transformer, BWCacheConfig(4, threshold=0.0))
    cached = run(transformer, text, schedule, batched)
    assert torch.equal(cached, plain)
    stats = bw_cache_stats(transformer, "run")
    assert (stats["forwards"], stats["computed"], stats["reused"]) == (schedule.num_items, schedule.num_items, 0)
    assert len(stats["indicator"]) == BLOCKS * 3  # steps 1..3 of each video block were measured


def with_recaches(computed_steps: list[int]) -> list[tuple]:
    """Row keys of a run computing ``computed_steps`` of every block, then its recache (but the last's)."""
    return [("run", b, s) for b in range(BLOCKS) for s in computed_steps + [RECACHE][: int(b < BLOCKS - 1)]]


@pytest.mark.parametrize("steps, reuse_interval, warmup", [(8, None, 1), (16, None, 1), (16, 3, 1), (8, None, 4)])
def test_forced_indicator_computes_exactly_the_expected_steps(transformer, text, steps, reuse_interval, warmup):
    spy = spy_on_last_block(transformer)
    config = BWCacheConfig(steps, threshold=FORCED, reuse_interval=reuse_interval, warmup_steps=warmup)
    apply_bw_cache(transformer, config)
    schedule = SCHEDULES["serial"](steps)
    run(transformer, text, schedule)
    computed = expected_computed(steps, reuse_interval, warmup)
    assert spy.keys == with_recaches(computed)
    stats = bw_cache_stats(transformer, "run")
    forwards = BLOCKS * (steps + 1) - 1  # the last block has no recache
    assert stats["computed"] == BLOCKS * (len(computed) + 1) - 1
    assert stats["reused"] == BLOCKS * (steps - len(computed))
    assert stats["reuse_rate"] == pytest.approx(BLOCKS * (steps - len(computed)) / forwards)
    assert stats["block_computations"] == stats["computed"] * TINY["num_layers"]
    assert stats["block_computations_skipped"] == stats["reused"] * TINY["num_layers"]


def test_batched_cascade_keeps_per_row_decisions_and_matches_local(transformer, text):
    """Rows of one forward are at different steps: each follows its own video block's pattern, the
    computing rows run alone, and the video equals the one-item-at-a-time run."""
    spy = spy_on_last_block(transformer)
    apply_bw_cache(transformer, BWCacheConfig(8, threshold=FORCED))
    schedule = SCHEDULES["cascade"](8)
    local = run(transformer, text, schedule, batched=False)
    reset_bw_cache(transformer)
    spy.keys.clear()
    batched = run(transformer, text, schedule, batched=True)
    assert sorted(spy.keys, key=str) == sorted(with_recaches(expected_computed(8)), key=str)
    assert bw_cache_stats(transformer, "run")["mixed_forwards"] > 0
    torch.testing.assert_close(batched, local, rtol=0, atol=1e-5)


def test_reused_rows_return_their_own_video_blocks_last_computed_output(transformer, text):
    """No state leaks between video blocks: in a batched cascade, what leaves the transformer blocks
    for a reused (block, step) is exactly what that block computed at its last computed step."""
    spy = spy_on_last_block(transformer)
    final = {}
    keys = []
    transformer.register_forward_pre_hook(lambda m, a, kw: keys.append(kw["row_keys"]), with_kwargs=True)
    transformer.norm_out.register_forward_pre_hook(
        lambda m, a: final.update({k: a[0][r : r + 1] for r, k in enumerate(keys[-1])}))
    apply_bw_cache(transformer, BWCacheConfig(8, threshold=FORCED))
    run(transformer, text, SCHEDULES["cascade"](8), batched=True)
    computed = expected_computed(8)
    for (request, block, step), tokens in final.items():
        source = step if step == RECACHE else max(s for s in computed if s <= step)
        assert torch.equal(tokens.float(), spy.outputs[(request, block, source)].float())


def test_a_prompt_switch_reaching_a_block_in_flight_is_computed_not_reused(transformer, text):
    """Block 2 switches the prompt at the tick it starts, where block 0 runs step 2, which a forced
    indicator reuses under one prompt: under the new prompt it is computed from it (as without
    the cache), and the frames equal the batched run's."""
    spy = spy_on_last_block(transformer)
    apply_bw_cache(transformer, BWCacheConfig(8, threshold=FORCED))
    schedule = SCHEDULES["cascade"](8)
    switch_tick = schedule.ticks[schedule.switch_tick(2)]
    assert WorkItem(0, 2) in switch_tick
    run(transformer, text, schedule)
    assert ("run", 0, 2) not in spy.keys
    texts = torch.cat([text, torch.randn(1, 7, TINY["text_dim"], generator=torch.Generator().manual_seed(2))])
    switched = {}
    for batched in (False, True):
        spy.keys.clear()
        job = make_job(transformer, texts, schedule)
        job.prompts = schedule.item_prompts([2])
        switched[batched] = torch.cat(LocalExecutor(batched=batched).execute(job, schedule).latents, dim=2)
        assert {("run", item.block, item.step) for item in switch_tick} <= set(spy.keys)
    torch.testing.assert_close(switched[True], switched[False], rtol=0, atol=1e-5)


def test_joint_forwards_are_always_computed(transformer, text):
    """A joint row holds several video blocks at different steps: it has no one state to reuse."""
    schedule = make_schedule(BLOCKS, 8, window=3, stride=1, joint=True)
    job = make_job(transformer, text, schedule)
    job.joint = True
    plain = torch.cat(LocalExecutor().execute(job, schedule).latents, dim=2)
    apply_bw_cache(transformer, BWCacheConfig(8, threshold=FORCED))
    cached = torch.cat(LocalExecutor().execute(job, schedule).latents, dim=2)
    assert torch.equal(cached, plain)
    stats = bw_cache_stats(transformer, "run")
    assert (stats["forwards"], stats["reused"]) == (schedule.num_ticks, 0)


def test_no_state_leaks_between_runs(transformer, text):
    apply_bw_cache(transformer, BWCacheConfig(8, threshold=FORCED))
    schedule = SCHEDULES["cascade"](8)
    first = run(transformer, text, schedule)
    once = bw_cache_stats(transformer, "run")
    second = run(transformer, text, schedule)  # same request id, no reset: step 0 starts afresh
    assert torch.equal(first, second)
    assert bw_cache_stats(transformer, "run")["reused"] == 2 * once["reused"]
    reset_bw_cache(transformer, "run")
    assert bw_cache_stats(transformer, "run")["forwards"] == 0


def test_interleaved_requests_do_not_read_each_others_cache(transformer, text):
    apply_bw_cache(transformer, BWCacheConfig(8, threshold=FORCED))
    schedule = SCHEDULES["cascade"](8)
    alone = {rid: run(transformer, text, schedule, request_id=rid, seed=seed) for rid, seed in (("a", 1), ("b", 2))}
    reset_bw_cache(transformer)
    jobs = {rid: make_job(transformer, text, schedule, rid, seed) for rid, seed in (("a", 1), ("b", 2))}
    caches = {rid: job.new_cache("cpu") for rid, job in jobs.items()}
    current = {rid: {} for rid in jobs}
    for tick in schedule.ticks:  # the two requests alternate tick by tick on one transformer
        for rid, job in jobs.items():
            for item in tick:
                x = current[rid].get(item.block, job.initial_latent(item.block, "cpu"))
                current[rid][item.block] = job.run([item], [x], caches[rid])[0]
            caches[rid].commit()
    for rid in jobs:
        interleaved = torch.cat([current[rid][b] for b in range(BLOCKS)], dim=2)
        assert torch.equal(interleaved, alone[rid])
        assert bw_cache_stats(transformer, rid)["reused"] == BLOCKS * 3


def test_skipped_items_stage_no_kv_and_recache_writes_clean_kv(transformer, text):
    """The KV rule: a reused step leaves its frames' committed K/V as its last computed step wrote
    them; the always-computed recache then writes the K/V of the clean block at timestep 0."""
    apply_bw_cache(transformer, BWCacheConfig(4, threshold=FORCED))
    schedule = SCHEDULES["serial"](4)
    job = make_job(transformer, text, schedule)
    cache = job.new_cache("cpu")
    x = job.initial_latent(0, "cpu")
    committed = []
    for item in schedule.block_items(0):
        x = job.run([item], [x], cache)[0]
        assert len(cache._staged) == (0 if item == WorkItem(0, 2) else TINY["num_layers"])
        cache.commit()
        committed.append(cache.read_frames(0, 3)[0].clone())
    assert torch.equal(committed[2], committed[1])  # step 2 reused: K/V of step 1 stay
    remove_bw_cache(transformer)
    fresh = job.new_cache("cpu")
    job.run([WorkItem(0, RECACHE)], [x], fresh)
    fresh.commit()
    torch.testing.assert_close(cache.read_frames(0, 3)[0], fresh.read_frames(0, 3)[0], rtol=0, atol=1e-6)


def test_removal_restores_the_original_forward(transformer, text):
    schedule = SCHEDULES["cascade"](4)
    before = run(transformer, text, schedule, batched=True)
    apply_bw_cache(transformer, BWCacheConfig(4, threshold=FORCED))
    assert not torch.equal(run(transformer, text, schedule, batched=True), before)
    with pytest.raises(ValueError):
        apply_bw_cache(transformer, BWCacheConfig(4))
    remove_bw_cache(transformer)
    assert torch.equal(run(transformer, text, schedule, batched=True), before)
    assert all(not block._diffusers_hook.hooks for block in transformer.blocks)
    with pytest.raises(ValueError):
        bw_cache_stats(transformer, "run")


def test_step_beyond_the_configured_steps_is_an_error(transformer, text):
    apply_bw_cache(transformer, BWCacheConfig(4))
    with pytest.raises(ValueError, match="num_steps"):
        run(transformer, text, SCHEDULES["serial"](8))

"""BlockCausalPipeline against an oracle that spells out the context rule with full forwards of the
plain model (no cache, no DenoiseJob, no executor): exact for serial schedules, and for cascades on
a one-layer model."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from cascade.backend import LocalExecutor
from cascade.model.presets import CascadeModel, LatentLayout, RandomTextEncoder, decode_pixels
from cascade.model.transformer import CausalWanTransformer
from cascade.pipeline import BlockCausalPipeline, DenoiseJob
from cascade.sampling import FlowMatchSampler, item_noise
from cascade.schedule import make_schedule

CONFIG = dict(
    patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, in_channels=3, out_channels=3,
    text_dim=16, freq_dim=16, ffn_dim=48, num_layers=2, cross_attn_norm=True, rope_max_seq_len=64,
)
LAYOUT = LatentLayout(channels=3, frames_per_block=2, height=8, width=8)
PROMPT, SEED = "a red circle", 3


def make_model(num_layers: int) -> CascadeModel:
    torch.manual_seed(0)
    transformer = CausalWanTransformer(**{**CONFIG, "num_layers": num_layers}).eval()
    sampler = FlowMatchSampler((1000, 750, 500), shift=5.0, prediction="flow")
    return CascadeModel("test-tiny", "random test model", transformer, RandomTextEncoder(16, 4, "cpu", torch.float32),
                        decode_pixels, sampler, LAYOUT, 8.0, random_weights=True)


@pytest.fixture(scope="module")
def model():
    return make_model(CONFIG["num_layers"])


@pytest.fixture(scope="module")
def one_layer():
    """With one layer, the K/V a block leaves in the cache depend on its own input and timestep
    alone, not on what it attended to: so a full forward reproduces them for any schedule."""
    return make_model(1)


@torch.no_grad()
def full_forward_oracle(model, schedule):
    """Runs a serial schedule with no cache: each item is one full forward over frames 0..b under
    a block-causal mask, earlier blocks fed what they were fed in their latest forward.

    This is exact where an earlier block's context did not change after its latest forward (serial
    schedules), or where a block's K/V do not depend on its context (a one-layer model): in a
    cascade, the deeper layers' K/V a block left behind were computed while it attended to its
    predecessors' *then* state, which a fresh full forward cannot reproduce."""
    sampler, lay = model.sampler, model.layout
    text, _ = model.encode_text([PROMPT])
    current = {}  # block -> latest x
    last_forward = {}  # block -> (input, timestep) of its latest forward, as of the previous tick
    tokens_per_block = lay.frames_per_block * (lay.height // 4) * (lay.width // 4)
    for tick in schedule.ticks:
        finished_tick = {}
        for item in tick:
            b = item.block
            x = current.get(b, item_noise(SEED, b, 0, lay.block_shape()))
            t = 0.0 if item.is_recache else sampler.model_timesteps[item.step]
            inputs = [last_forward[e][0] for e in range(b)] + [x]
            steps = [last_forward[e][1] for e in range(b)] + [t]
            frames_t = torch.tensor([[s for s in steps for _ in range(lay.frames_per_block)]])
            block_of = torch.arange(b + 1).repeat_interleave(tokens_per_block)
            mask = block_of[None, :] <= block_of[:, None]
            out = model.transformer(torch.cat(inputs, dim=2), frames_t, text, attention_mask=mask).sample
            out = out[:, :, -lay.frames_per_block:]
            finished_tick[b] = (x, t)
            if item.is_recache:
                continue
            x0 = sampler.predict_x0(x, out, item.step)
            if item.step == sampler.num_steps - 1:
                current[b] = x0
            else:
                current[b] = sampler.next_input(x, x0, item.step, lambda: item_noise(SEED, b, item.step + 1, tuple(x0.shape)))
        last_forward.update(finished_tick)
    return torch.cat([current[b] for b in range(schedule.num_blocks)], dim=2)


@torch.no_grad()
def snapshot_oracle(model, schedule):
    """Staging against copies, on the two-layer model: every item of a tick runs (through the same
    ``DenoiseJob.run`` as the pipeline) on its own copy of the cache as it was when the tick began;
    only its own frames' K/V are then copied into the cache of the next tick. Not independent of
    the job's forward: it checks the staging and committing of the executors, where the one-layer
    full-forward test checks the context rule itself."""
    text, _ = model.encode_text([PROMPT])
    job = DenoiseJob(model.transformer, text, model.sampler, model.layout, schedule.num_blocks, SEED)
    cache = job.new_cache("cpu")
    current = {}
    for tick in schedule.ticks:
        next_cache = copy.deepcopy(cache)
        for item in tick:
            own = copy.deepcopy(cache)
            x = current.get(item.block, job.initial_latent(item.block, "cpu"))
            current[item.block] = job.run([item], [x], own)[0]
            start, count = own.commit()[0]
            next_cache.write_frames(start, *own.read_frames(start, count))
        cache = next_cache
    return torch.cat([current[b] for b in range(schedule.num_blocks)], dim=2)


SERIAL = {"serial+recache": dict(window=1, recache=True), "serial": dict(window=1, recache=False)}
CASCADES = {
    "cascade w2 s1": dict(window=2, stride=1, recache=False),
    "cascade w3 s1+recache": dict(window=3, stride=1, recache=True),
    "cascade w4 s2": dict(window=4, stride=2, recache=False),
}


@pytest.mark.parametrize("name", list(SERIAL))
@pytest.mark.parametrize("batched", [False, True])
def test_serial_pipeline_equals_full_forward_oracle(model, name, batched):
    schedule = make_schedule(4, 3, **SERIAL[name])
    output = BlockCausalPipeline(model)(PROMPT, schedule, LocalExecutor(batched=batched), seed=SEED)
    assert (output.latents - full_forward_oracle(model, schedule)).abs().max().item() <= 1e-5
    assert output.frames.shape == (4 * LAYOUT.frames_per_block, 8, 8, 3) and output.frames.dtype == np.uint8


def test_ode_sampler_pipeline_equals_full_forward_oracle(model):
    """The pipeline hands the sampler each item's own input, so the ε an ode step keeps is that item's."""
    ode = dataclasses.replace(model, sampler=dataclasses.replace(model.sampler, renoise="ode"))
    schedule = make_schedule(4, 3, **SERIAL["serial+recache"])
    output = BlockCausalPipeline(ode)(PROMPT, schedule, LocalExecutor(), seed=SEED)
    assert (output.latents - full_forward_oracle(ode, schedule)).abs().max().item() <= 1e-5
    fresh = BlockCausalPipeline(model)(PROMPT, schedule, LocalExecutor(), seed=SEED)
    assert (output.latents - fresh.latents).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", list(CASCADES))
@pytest.mark.parametrize("batched", [False, True])
def test_cascade_pipeline_on_one_layer_equals_full_forward_oracle(one_layer, name, batched):
    schedule = make_schedule(4, 3, **CASCADES[name])
    output = BlockCausalPipeline(one_layer)(PROMPT, schedule, LocalExecutor(batched=batched), seed=SEED)
    assert (output.latents - full_forward_oracle(one_layer, schedule)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(SERIAL) + list(CASCADES))
@pytest.mark.parametrize("batched", [False, True])
def test_pipeline_equals_snapshot_oracle(model, name, batched):
    schedule = make_schedule(4, 3, **{**SERIAL, **CASCADES}[name])
    output = BlockCausalPipeline(model)(PROMPT, schedule, LocalExecutor(batched=batched), seed=SEED)
    assert (output.latents - snapshot_oracle(model, schedule)).abs().max().item() <= 1e-5


def test_cascade_differs_from_serial_but_serial_executors_agree(model):
    pipe = BlockCausalPipeline(model)
    serial = pipe(PROMPT, make_schedule(4, 3), LocalExecutor(), seed=SEED).latents
    batched = pipe(PROMPT, make_schedule(4, 3), LocalExecutor(batched=True), seed=SEED).latents
    cascade = pipe(PROMPT, make_schedule(4, 3, window=4, stride=1), LocalExecutor(), seed=SEED).latents
    assert torch.equal(serial, batched)
    assert (serial - cascade).abs().max().item() > 1e-3


def test_joint_window_one_is_serial_and_joint_cascade_is_its_own_computation(model):
    pipe = BlockCausalPipeline(model)
    serial = pipe(PROMPT, make_schedule(4, 3), LocalExecutor(), seed=SEED).latents
    joint_serial = pipe(PROMPT, make_schedule(4, 3), LocalExecutor(), seed=SEED, joint=True).latents
    assert (serial - joint_serial).abs().max().item() <= 1e-5
    cascade = make_schedule(4, 3, window=3, stride=1, recache=False)
    causal = pipe(PROMPT, cascade, LocalExecutor(), seed=SEED)
    joint = pipe(PROMPT, cascade, LocalExecutor(), seed=SEED, joint=True)
    assert joint.model_calls == cascade.num_ticks and causal.model_calls == cascade.num_items
    assert (causal.latents - joint.latents).abs().max().item() > 1e-4


def test_timeline_and_progress(model):
    schedule = make_schedule(3, 3, window=2, stride=1)
    seen = []
    output = BlockCausalPipeline(model)(PROMPT, schedule, LocalExecutor(), seed=SEED,
                                        progress=lambda f, msg: seen.append(f))
    items = sorted((e.block, str(e.step)) for e in output.timeline)
    assert items == sorted((i.block, str(i.step)) for tick in schedule.ticks for i in tick)
    assert all(e.worker == 0 and 0 <= e.start <= e.end for e in output.timeline)
    assert len(seen) == schedule.num_ticks and seen[-1] == 1.0
    assert seen == sorted(seen)


def test_seed_changes_the_video_and_fixes_it(model):
    pipe = BlockCausalPipeline(model)
    a = pipe(PROMPT, make_schedule(2, 3), LocalExecutor(), seed=1).latents
    b = pipe(PROMPT, make_schedule(2, 3), LocalExecutor(), seed=1).latents
    c = pipe(PROMPT, make_schedule(2, 3), LocalExecutor(), seed=2).latents
    assert torch.equal(a, b) and not torch.equal(a, c)


class RecordingDecoder:
    """A block decoder that keeps the blocks it was fed, to check they come once each, in order."""

    def __init__(self, fed: list):
        self.fed = fed

    def __call__(self, latent: torch.Tensor) -> np.ndarray:
        self.fed.append(latent.clone())
        return decode_pixels(latent)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("window, stride", [(1, None), (3, 1)])
def test_blocks_are_decoded_one_by_one_as_they_finish_and_equal_the_whole_decode(model, batched, window, stride):
    fed, handed = [], []
    model = dataclasses.replace(model, new_block_decoder=lambda: RecordingDecoder(fed))
    schedule = make_schedule(3, 3, window=window, stride=stride)
    out = BlockCausalPipeline(model)(PROMPT, schedule, LocalExecutor(batched=batched), seed=SEED,
                                     on_block=lambda block, frames, t: handed.append((block, frames, t)))
    assert [block for block, _, _ in handed] == [0, 1, 2]
    assert torch.equal(torch.cat(fed, dim=2), out.latents)  # each block once, in order
    assert np.array_equal(np.concatenate([frames for _, frames, _ in handed]), decode_pixels(out.latents))
    assert np.array_equal(out.frames, decode_pixels(out.latents))
    assert out.block_frames == [LAYOUT.frames_per_block] * 3
    final_step_end = {e.block: e.end for e in out.timeline if e.step == schedule.num_steps - 1}
    assert all(t >= final_step_end[block] for block, _, t in handed)  # handed on once final, not before

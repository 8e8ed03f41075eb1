"""Prompt switches mid-video (issue 14): prompt schedules, the serial switch recache, the moment a
cascade switches, equality across executors, the figures a run reports, and the analyzer's
per-prompt scoring.

A smaller random model with a local window and a sink for the math, random-tiny for the pool and
the service, rendered clips for the analyzer; everything small, so the file runs in seconds.
"""

import copy
import dataclasses
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import app
from cascade.__main__ import _request, build_parser, main
from cascade.backend import LocalExecutor
from cascade.backend.local import torch_threads
from cascade.backend.pool import DistributedExecutor
from cascade.metrics import block_completion_times, judge_segments, prompt_segments
from cascade.model.presets import TINY, LatentLayout, PresetLoader, load_model
from cascade.model.transformer import CausalWanTransformer
from cascade.pipeline import BlockCausalPipeline, DenoiseJob, switch_recache_blocks, switch_recache_plan
from cascade.schedule import WorkItem, check_prompt_schedule, make_schedule, parse_prompt_schedule
from cascade.service import GenerateRequest, Offer, Service
from cascade.toy import analyzer, data
from cascade.ui.replay import replay_data
from cascade.ui.tables import run_table
from cascade.ui.timeline import timeline_figure

SEED = 3
SMALLER = dict(patch_size=(1, 4, 4), num_attention_heads=2, attention_head_dim=16, ffn_dim=48, num_layers=2,
               rope_max_seq_len=64)
RED, BLUE, GREEN = "a red circle", "a blue square", "a green triangle"
TWO_SWITCHES = ((0, RED), (2, BLUE), (4, GREEN))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Forwards this small gain nothing from a second thread, whose spin waits cost milliseconds
    each on a busy two-core machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny():
    return load_model("random-tiny")


@pytest.fixture(scope="module")
def model(tiny):
    """random-tiny made smaller (8x8 frames, 2 frames a block), attending to a local window of 6
    frames with 2 sink frames (LongLive's shape scaled down): block k sees blocks k-2, k-1 and 0."""
    torch.manual_seed(0)
    return replace(tiny, transformer=CausalWanTransformer(**{**TINY, **SMALLER}).eval(),
                   layout=LatentLayout(channels=3, frames_per_block=2, height=8, width=8), local_window=6, sink_frames=2)


def serial_with_switches(model, blocks, steps, prompts, recache=True):
    return make_schedule(blocks, steps, recache=recache, switch_recache=switch_recache_plan(model, prompts))


# --- prompt schedules: the text form and its errors ------------------------------------------------


def test_the_text_form_reads_entries_split_by_semicolons_or_lines():
    assert parse_prompt_schedule("0:a red circle moving right;4:a blue circle moving right") == (
        (0, "a red circle moving right"), (4, "a blue circle moving right"))
    assert parse_prompt_schedule(" 0: a red ball \n\n 3 : a blue ball: fast;\n") == ((0, "a red ball"), (3, "a blue ball: fast"))


@pytest.mark.parametrize("text, message", [
    ("", "the prompt schedule is empty"),
    ("a red ball", "a prompt schedule entry reads 'block: prompt', got 'a red ball'"),
    ("zero: a red ball", "a prompt schedule entry reads 'block: prompt', got 'zero: a red ball'"),
    ("0:red;-2:blue", "a prompt schedule entry reads 'block: prompt', got '-2:blue'"),
    ("0:red;3:   ", "the prompt for block 3 is empty"),
    ("1:red;3:blue", "the prompt schedule must start at block 0, got 1"),
    ("0:red;4:blue;4:green", "block 4 appears twice in the prompt schedule"),
    ("0:red;4:blue;2:green", "the prompt schedule's blocks must increase: block 2 comes after block 4"),
])
def test_bad_schedules_get_one_clear_line(text, message):
    with pytest.raises(ValueError) as raised:
        parse_prompt_schedule(text)
    assert str(raised.value) == message


def test_blocks_out_of_range_are_refused_for_the_video_they_run_in():
    assert check_prompt_schedule([(0, RED), (3, BLUE)], num_blocks=4) == ((0, RED), (3, BLUE))
    with pytest.raises(ValueError) as raised:
        check_prompt_schedule([(0, RED), (4, BLUE)], num_blocks=4)
    assert str(raised.value) == "the prompt schedule switches at block 4, but the video has 4 blocks (0..3)"
    with pytest.raises(ValueError, match="a prompt schedule entry is a"):
        check_prompt_schedule([(0, RED, "extra")])


# --- the schedule: serial switch recaches and the moment of a switch ----------------------------------


@pytest.mark.parametrize("local_window, sink_frames, switch, blocks", [
    (12, 0, 4, (0, 1, 2, 3)),  # tiny-shapes: the last min(12, frames so far) frames
    (12, 0, 6, (2, 3, 4, 5)),
    (12, 0, 1, (0,)),
    (9, 3, 4, (0, 1, 2, 3)),  # LongLive (local_attn_size 12): all 12 frames so far, the sinks rewritten
    (9, 3, 1, (0,)),
    (9, 3, 6, (3, 4, 5)),  # past 12 frames: the sinks kept, the 9 frames after the pass's first 3
    (9, 3, 10, (7, 8, 9)),
    (None, 0, 4, (0, 1, 2, 3)),  # global attention: everything before
    (None, 3, 4, (0, 1, 2, 3)),
])
def test_the_serial_switch_recaches_the_last_frames_and_keeps_the_sinks_past_them(model, local_window, sink_frames,
                                                                                  switch, blocks):
    windowed = replace(model, layout=replace(model.layout, frames_per_block=3), local_window=local_window,
                       sink_frames=sink_frames)
    assert switch_recache_blocks(windowed, switch) == blocks


def test_a_switch_pass_is_one_tick_right_before_the_switch_block():
    plain = make_schedule(6, 2)
    schedule = make_schedule(6, 2, switch_recache={4: (1, 2, 3)})
    at = schedule.switch_tick(4)
    assert [list(tick) for tick in schedule.ticks[at:at + 2]] == [
        [WorkItem(1, "switch@4"), WorkItem(2, "switch@4"), WorkItem(3, "switch@4")], [WorkItem(4, 0)]]
    assert schedule.switch_items(4) == [WorkItem(b, "switch@4") for b in (1, 2, 3)]
    assert schedule.num_items == plain.num_items + 3 and schedule.num_ticks == plain.num_ticks + 1
    assert [t for t in schedule.ticks if t[0].switch is None] == list(plain.ticks)
    with pytest.raises(ValueError, match="serial schedules"):
        make_schedule(6, 2, window=2, stride=1, switch_recache={4: (3,)})
    with pytest.raises(ValueError, match="consecutive earlier blocks"):
        make_schedule(6, 2, switch_recache={4: (3, 4)})
    with pytest.raises(ValueError, match="consecutive earlier blocks"):
        make_schedule(6, 2, switch_recache={4: (1, 3)})


@pytest.mark.parametrize("schedule", [make_schedule(6, 3, window=3, stride=1, recache=False),
                                      make_schedule(6, 3, switch_recache={2: (0, 1), 4: (3,)})],
                         ids=["cascade", "serial"])
def test_each_prompt_takes_over_in_the_tick_its_switch_block_is_first_touched(schedule):
    prompts = schedule.item_prompts([2, 4])
    moments = [schedule.switch_tick(2), schedule.switch_tick(4)]
    for index, tick in enumerate(schedule.ticks):
        expected = sum(index >= m for m in moments)
        assert {prompts.get(item, 0) for item in tick} == {expected}
    for block, moment in zip((2, 4), moments):
        assert any(item == WorkItem(block, 0) or item.switch == block for item in schedule.ticks[moment])
        assert not any(item.block == block or item.switch == block for tick in schedule.ticks[:moment] for item in tick)
    assert schedule.item_prompts([]) == {}


def test_switch_recaches_are_not_a_blocks_completion():
    timeline = [dict(block=0, step=0, worker=0, start=0.0, end=1.0), dict(block=1, step=0, worker=0, start=1.0, end=2.0),
                dict(block=0, step="switch@2", worker=0, start=2.0, end=3.0),
                dict(block=2, step=0, worker=0, start=3.0, end=4.0)]
    assert block_completion_times(timeline, 3) == [1.0, 2.0, 4.0]


# --- the pipeline: what a switch computes --------------------------------------------------------


@torch.no_grad()
def switching_oracle(model, schedule, prompts):
    """The context rule with snapshots (as tests/test_pipeline.py's oracle) and the prompt swapped
    in by hand: prompt i takes over in the first tick that touches its block (a switch recache
    for it, or its first step), for every item of that tick and after. A switch pass is one forward."""
    sampler = model.sampler.with_steps(schedule.num_steps)
    jobs = [DenoiseJob(model.transformer, model.encode_text([text])[0], sampler, model.layout, schedule.num_blocks, SEED,
                       local_window=model.local_window, sink_frames=model.sink_frames) for _, text in prompts]
    cache = jobs[0].new_cache("cpu")
    current, prompt = {}, 0
    for tick in schedule.ticks:
        touched = {item.block if item.step == 0 else item.switch for item in tick}
        if prompt + 1 < len(prompts) and prompts[prompt + 1][0] in touched:
            prompt += 1
        next_cache = copy.deepcopy(cache)
        for group in ([tick] if jobs[prompt].one_forward(tick) else [(item,) for item in tick]):
            own = copy.deepcopy(cache)
            xs = [current.get(item.block, jobs[prompt].initial_latent(item.block, "cpu")) for item in group]
            for item, out in zip(group, jobs[prompt].run(list(group), xs, own)):
                current[item.block] = out
            for start, count in own.commit():
                next_cache.write_frames(start, *own.read_frames(start, count))
        cache = next_cache
    return torch.cat([current[b] for b in range(schedule.num_blocks)], dim=2)


def cascade_schedule():
    return make_schedule(6, 3, window=3, stride=1)


@pytest.mark.parametrize("kind", ["serial", "cascade"])
def test_the_pipeline_switches_prompts_as_the_oracle_does(model, kind):
    # every frame so far, up to the local window and its sinks (8 frames): sinks rewritten
    assert switch_recache_plan(model, TWO_SWITCHES) == {2: (0, 1), 4: (0, 1, 2, 3)}
    schedule = serial_with_switches(model, 6, 3, TWO_SWITCHES) if kind == "serial" else cascade_schedule()
    oracle = switching_oracle(model, schedule, TWO_SWITCHES)
    for batched in (False, True):
        out = BlockCausalPipeline(model)(TWO_SWITCHES, schedule, LocalExecutor(batched=batched), seed=SEED)
        assert (out.latents - oracle).abs().max().item() <= 1e-5
        assert out.prompts == TWO_SWITCHES
        assert out.cross_attention_builds == [3]  # once per prompt: at the start and at each switch
    plain = BlockCausalPipeline(model)(RED, schedule if kind == "cascade" else make_schedule(6, 3), LocalExecutor(),
                                       seed=SEED)
    # blocks denoised before the first switch's moment are the plain prompt's; the rest are not
    moment = schedule.switch_tick(2)
    done = [b for b in range(6) if all(i.block != b or not i.is_denoising for t in schedule.ticks[moment:] for i in t)]
    assert done == ([0, 1] if kind == "serial" else [])
    per_block = model.layout.frames_per_block
    edge = len(done) * per_block
    assert torch.equal(oracle[:, :, :edge], plain.latents[:, :, :edge])
    assert (oracle[:, :, 2 * per_block:] - plain.latents[:, :, 2 * per_block:]).abs().max().item() > 1e-3


def test_the_serial_switch_recache_rewrites_the_context_the_new_prompt_reads(model):
    """Without the recache forwards the block after a switch reads K/V written under the old prompt."""
    prompts = TWO_SWITCHES[:2]
    with_recache = BlockCausalPipeline(model)(prompts, serial_with_switches(model, 4, 3, prompts), LocalExecutor(),
                                              seed=SEED)
    without = BlockCausalPipeline(model)(prompts, make_schedule(4, 3), LocalExecutor(), seed=SEED)
    after = 2 * model.layout.frames_per_block
    assert (with_recache.latents[:, :, after:] - without.latents[:, :, after:]).abs().max().item() > 1e-4
    with pytest.raises(ValueError, match="recaches for switches at blocks \\[2\\]"):
        BlockCausalPipeline(model)(RED, serial_with_switches(model, 4, 3, prompts), LocalExecutor())


@pytest.mark.parametrize("schedule", [make_schedule(4, 3), make_schedule(4, 3, window=2, stride=1)],
                         ids=["serial", "cascade"])
def test_a_schedule_of_one_entry_is_the_plain_prompt_exactly(model, schedule):
    pipe = BlockCausalPipeline(model)
    for batched in (False, True):
        plain = pipe(RED, schedule, LocalExecutor(batched=batched), seed=SEED)
        scheduled = pipe([(0, RED)], schedule, LocalExecutor(batched=batched), seed=SEED)
        assert torch.equal(plain.latents, scheduled.latents)
        assert plain.model_calls == scheduled.model_calls and plain.cross_attention_builds == [1]


# --- every executor computes the same switches -------------------------------------------------------

POOL_PROMPTS = ((0, "a red ball"), (2, "a blue box"), (4, "a green disc"))


@pytest.fixture(scope="module")
def pool():
    with DistributedExecutor(PresetLoader("random-tiny"), workers=2, threads_per_worker=1) as executor:
        yield executor


def test_the_blocks_placement_refuses_a_switch_pass_in_one_line_and_tokens_runs_it(tiny, pool):
    """A serial switch pass is one forward of blocks that live on different workers of the blocks
    placement, which refuses it before any work, naming the placement that runs it: on tokens
    every worker holds every block, and runs the pass as the local executor does."""
    schedule = serial_with_switches(tiny, 5, 2, POOL_PROMPTS)
    with pytest.raises(ValueError, match="^a serial run with prompt switches re-encodes its recent blocks in one "
                                         "forward .LongLive's switch pass., which the blocks placement spreads over "
                                         "workers: use placement tokens$"):
        BlockCausalPipeline(tiny)(POOL_PROMPTS, schedule, pool, seed=SEED)
    tokens = BlockCausalPipeline(tiny)(POOL_PROMPTS, schedule, pool.placed("tokens"), seed=SEED)
    local = BlockCausalPipeline(tiny)(POOL_PROMPTS, schedule, LocalExecutor(threads=1), seed=SEED)
    assert (tokens.latents - local.latents).abs().max().item() <= 1e-4
    assert tokens.model_calls == local.model_calls == schedule.num_ticks  # each switch pass one forward


@pytest.mark.parametrize("kind", ["cascade"])
def test_pool_local_and_batched_executors_give_the_same_frames_with_switches(tiny, pool, kind):
    schedule = make_schedule(5, 2, window=2, stride=1)
    runs = {executor.name: BlockCausalPipeline(tiny)(POOL_PROMPTS, schedule, executor, seed=SEED)
            for executor in (LocalExecutor(threads=1), LocalExecutor(batched=True, threads=1), pool)}
    for name, run in runs.items():
        assert (run.latents - runs["local"].latents).abs().max().item() <= 1e-4, name
        assert len(run.timeline) == schedule.num_items, name
        # each worker builds its cross-attention cache once per prompt: at the start and at each switch
        assert run.cross_attention_builds == [len(POOL_PROMPTS)] * run.workers, name
    assert sorted((e.block, str(e.step)) for e in runs["distributed"].timeline) == sorted(
        (i.block, str(i.step)) for tick in schedule.ticks for i in tick)


# --- the service: requests, figures and errors ----------------------------------------------------------

SMALL = GenerateRequest(prompt="a red circle moving right", model="random-tiny", blocks=4, steps=2, window=2,
                        stride=1, threads=1)
SWITCHED = replace(SMALL, prompt="", prompt_schedule=((0, "a red circle moving right"), (2, "a blue circle moving right")))


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with Service(output_root=tmp_path_factory.mktemp("switch-out"), device="cpu") as svc:
        yield svc


def test_compare_reports_each_switchs_latency_and_forwards_for_both_runs(service, tiny):
    result = service.compare(SWITCHED)
    plain = service.compare(SMALL)
    recached = len(switch_recache_blocks(tiny, 2))
    for name, extra in (("serial", recached), ("cascade", 0)):
        stats = result.stats[name]
        schedule = service.resolve(replace(SWITCHED, mode=name)).schedule(tiny)
        (switch,) = stats["switches"]
        shown = stats["blocks_shown_s"]
        assert switch["block"] == 2 and switch["prompt"] == "a blue circle moving right"
        assert switch["latency_s"] == shown[2] - shown[1] > 0
        assert switch["forwards"] == extra == stats["forwards"] - plain.stats[name]["forwards"]
        first = set(schedule.ticks[schedule.switch_tick(2)])  # the switch's moment: the tick block 2 is first touched
        assert switch["at_s"] == min(e["start"] for e in stats["timeline"] if WorkItem(e["block"], e["step"]) in first)
        assert stats["prompt"] == "a red circle moving right" and stats["prompt_schedule"] == [list(e) for e in SWITCHED.prompt_schedule]
        assert stats["cross_attention_builds"] == [2]
    assert plain.stats["serial"]["switches"] == [] and plain.stats["serial"]["cross_attention_builds"] == [1]
    saved = json.loads(result.files["stats.json"].read_text())
    assert [saved[name]["switches"] for name in ("serial", "cascade")] == [
        result.stats[name]["switches"] for name in ("serial", "cascade")]


def test_a_request_with_a_one_entry_schedule_is_the_plain_request(service):
    plain = service.generate(replace(SMALL, mode="cascade"), files=False)
    scheduled = service.generate(replace(SMALL, mode="cascade", prompt="", prompt_schedule=((0, SMALL.prompt),)),
                                 files=False)
    assert np.array_equal(plain.frames, scheduled.frames)
    assert plain.stats["forwards"] == scheduled.stats["forwards"] and scheduled.stats["switches"] == []


@pytest.mark.parametrize("changes, message", [
    (dict(prompt_schedule=((0, "red"), (4, "blue"))), "the prompt schedule switches at block 4, but the video has 4 blocks (0..3)"),
    (dict(prompt_schedule=((0, "red"), (2, ""))), "the prompt for block 2 is empty"),
    (dict(prompt_schedule=((0, "red"), (2, "x" * 2001))), "the prompt is 2001 characters long; the limit is 2000"),
    (dict(prompt="a red ball", prompt_schedule=((0, "red"),)), "give a prompt or a prompt schedule, not both"),
])
def test_bad_schedules_in_a_request_are_refused_before_any_work(service, changes, message):
    with pytest.raises(ValueError) as raised:
        service.compare(replace(SMALL, **{"prompt": "", **changes}))
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_cli_takes_a_prompt_schedule_instead_of_a_prompt(tmp_path, capsys):
    args = build_parser().parse_args(["generate", "--prompt-schedule", "0:a red ball;2:a blue ball", "--out", "x"])
    request = _request(args, "serial")
    assert (request.prompt, request.prompt_schedule) == ("", ((0, "a red ball"), (2, "a blue ball")))
    with pytest.raises(SystemExit):  # one or the other
        build_parser().parse_args(["generate", "--prompt", "a", "--prompt-schedule", "0:b", "--out", "x"])
    capsys.readouterr()
    assert main(["compare", "--prompt-schedule", "0:a red ball;3:a blue ball", "--model", "random-tiny",
                 "--blocks", "3", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err == "error: the prompt schedule switches at block 3, but the video has 3 blocks (0..2)\n"
    assert not (tmp_path / "bad").exists()


# --- the analyzer: each prompt's stretch against its own prompt ----------------------------------------


def test_segments_leave_out_the_block_right_after_each_switch():
    prompts = ((0, RED), (2, BLUE), (3, GREEN))
    assert prompt_segments([9, 12, 12, 12, 12], prompts) == [
        {"prompt": RED, "blocks": [0, 2], "frames": [0, 21]},
        {"prompt": GREEN, "blocks": [4, 5], "frames": [45, 57]},  # BLUE has nothing but its transition block
    ]


def test_the_analyzer_scores_each_stretch_against_its_own_prompt():
    spec = data.ClipSpec("red", "circle", "right", "black", 16, 10.0, 32.0)
    frames = np.concatenate([data.render_clip(spec, 24)[:12], data.render_clip(replace(spec, colour="blue"), 24)[12:]])
    blocks = [3] * 8
    followed = judge_segments(analyzer.judge, frames, blocks, ((0, "a red circle moving right"),
                                                               (4, "a blue circle moving right")))
    assert [(s["blocks"], s["colour"], s["shape"], s["motion"]) for s in followed] == [
        ([0, 4], 1.0, 1.0, 1.0), ([5, 8], 1.0, 1.0, 1.0)]
    ignored = judge_segments(analyzer.judge, frames, blocks, ((0, "a red circle moving right"),
                                                              (4, "a green circle moving right")))
    assert [s["colour"] for s in ignored] == [1.0, 0.0]


def test_held_out_switch_schedules_change_only_the_colour():
    items = data.switch_eval_set(32, switch_block=4)
    assert len(items) == 32
    for item in items:
        (first, before), (block, after) = item.schedule
        assert (first, block) == (0, 4)
        wanted, then = data.parse_prompt(before), data.parse_prompt(after)
        assert (wanted.colour, wanted.shape, wanted.motion) == (item.spec.colour, item.spec.shape, item.spec.motion)
        assert then == dataclasses.replace(wanted, colour=item.colour_after) and then.colour != wanted.colour
        assert (item.spec.colour, item.spec.shape, item.spec.motion) in data.HELD_OUT_COMBOS


# --- the app: the schedule field, the timeline and the replay --------------------------------------------


def test_the_app_reads_the_schedule_field_and_marks_the_switches(service):
    offer = Offer(defaults=SMALL, runnable=("random-tiny",), unavailable=(), max_workers=2, max_blocks=16,
                  max_steps=32)
    values = ["random-tiny", 4, 2, "batched", 2, 2, 1, "causal", True, False, 0.15, 0]
    request = offer.request("ignored", *values, prompt_schedule="0: a red ball\n2: a blue ball")
    assert (request.prompt, request.prompt_schedule) == ("", ((0, "a red ball"), (2, "a blue ball")))
    with pytest.raises(ValueError, match="^block 2 appears twice in the prompt schedule$"):
        offer.request("", *values, prompt_schedule="0: red\n2: blue\n2: green")
    for example in app.load_examples(kind="prompt_schedules"):
        assert len(parse_prompt_schedule(example)) >= 2
    result = service.compare(replace(request, threads=1))
    figure = timeline_figure(result.stats)
    lines = [(shape.x0, annotation.text) for shape, annotation in zip(figure.layout.shapes, figure.layout.annotations)]
    assert lines == [(result.stats[run]["switches"][0]["at_s"], f"{label}: prompt of block 2")
                     for run, label in (("serial", "Serial (block-causal)"), ("cascade", "Block Cascading"))]
    assert "S" in [label for trace in figure.data for label in trace.text]
    assert "| switch at block 2 |" in run_table(result.stats["serial"])
    counts = {run: result.stats[run]["block_frames"] for run in ("serial", "cascade")}
    assert [run["switches"] for run in replay_data(result, counts)["runs"]] == [[2], [2]]

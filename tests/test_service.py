"""cascade.service.Service: one door, shared by concurrent callers, cleaned up on close."""

import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cascade.model.presets import load_model
import cascade.backend.pool
from cascade.service import FifoLock, GenerateRequest, Service, leaves_a_core_free, sequence_figures, view_scale
from cascade.ui.tables import speedup_markdown
from cascade.video import Mp4Writer, write_mp4
from process_checks import alive
from test_video import read_mp4

SMALL = GenerateRequest(prompt="a red circle moving right", model="random-tiny", blocks=3, steps=2, window=2,
                        stride=1, threads=1)
SHARED_MEMORY = Path("/dev/shm")


@pytest.fixture
def service(tmp_path):
    with Service(output_root=tmp_path / "out", device="cpu") as svc:
        yield svc


def test_two_threads_comparing_at_once_get_exactly_what_each_gets_alone(service):
    requests = [replace(SMALL, prompt="a red circle moving right", seed=1),
                replace(SMALL, prompt="a blue square moving up", seed=2, bwcache=True, bwcache_threshold=float("inf"))]
    alone = [service.compare(r) for r in requests]
    together = [None, None]
    start = threading.Barrier(2)

    def run(index):
        start.wait()
        together[index] = service.compare(requests[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for solo, shared in zip(alone, together):
        assert np.array_equal(solo.serial.frames, shared.serial.frames)
        assert np.array_equal(solo.cascade.frames, shared.cascade.frames)
        assert solo.stats["cascade"]["bwcache"]["reuse_rate"] == shared.stats["cascade"]["bwcache"]["reuse_rate"]
        assert solo.files["stats.json"].parent != shared.files["stats.json"].parent  # a fresh folder each
    # one of them waited for the other's whole comparison, and says so apart from its latency
    waited = max(r.stats["queued_s"] for r in together)
    other_run = min(together, key=lambda r: r.stats["queued_s"])
    assert waited >= other_run.stats["serial"]["latency_s"] + other_run.stats["cascade"]["latency_s"]


def test_waiters_get_their_turn_in_the_order_they_arrived():
    lock = FifoLock()
    order, waits = [], {}

    def take(i):
        with lock.turn() as waited:
            order.append(i)
            waits[i] = waited

    with lock.turn():
        threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
        for i, t in enumerate(threads):
            t.start()
            while lock._next_ticket < i + 2:  # thread i holds its ticket before thread i + 1 arrives
                time.sleep(0.001)
    for t in threads:
        t.join(timeout=5)
    assert order == [0, 1, 2, 3]
    assert all(waits[i] > 0 for i in order)


def test_a_waiter_interrupted_in_the_queue_does_not_stop_the_turns_after_it():
    """Ctrl-C in a thread waiting its turn gives the turn up; the waiter behind it still gets one."""
    lock = FifoLock()
    release, holding, served = threading.Event(), threading.Event(), threading.Event()

    def hold():
        with lock.turn():
            holding.set()
            release.wait(5)

    def after_the_interrupted():
        while lock._next_ticket < 2:  # the main thread has taken its ticket
            time.sleep(0.01)
        with lock.turn():
            served.set()

    def interrupt(signum, frame):
        if lock._next_ticket < 3:  # both waiters are in the queue
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        raise KeyboardInterrupt

    holder = threading.Thread(target=hold, daemon=True)
    behind = threading.Thread(target=after_the_interrupted, daemon=True)  # never left blocking the exit
    holder.start()
    holding.wait(5)
    behind.start()
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt), lock.turn():
            pytest.fail("the interrupted waiter got a turn")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    release.set()
    assert served.wait(5)
    holder.join(5), behind.join(5)
    assert lock._serving == lock._next_ticket == 3  # and the lock is free: every ticket is done with


@pytest.mark.parametrize("mode", ["serial", "cascade"])
@pytest.mark.parametrize("executor", ["local", "batched"])
def test_blocks_are_handed_on_in_order_and_decode_to_the_whole_video(service, mode, executor):
    handed = []
    result = service.generate(replace(SMALL, mode=mode, executor=executor),
                              on_block=lambda run, block, frames, t: handed.append((run, block, frames, t)))
    assert [(run, block) for run, block, _, _ in handed] == [(mode, b) for b in range(3)]
    assert np.array_equal(np.concatenate([frames for *_, frames, _ in handed]), result.frames)
    assert np.array_equal(np.load(result.files["frames.npy"]), result.frames)
    times = [t for *_, t in handed]
    assert times == sorted(times) == result.stats["blocks_shown_s"]
    assert result.stats["time_to_first_block_s"] == times[0]
    # frames are final after the block's last step, before its recache
    last_step = max(e["end"] for e in result.stats["timeline"] if e["block"] == 0 and e["step"] == 1)
    assert times[0] >= last_step


def test_compare_hands_on_both_runs_and_writes_every_file(service):
    handed = []
    result = service.compare(SMALL, on_block=lambda run, block, frames, t: handed.append((run, block)))
    assert handed == [("serial", b) for b in range(3)] + [("cascade", b) for b in range(3)]
    folder = result.files["stats.json"].parent
    assert folder.parent == service.output_root
    assert set(result.files) == {"serial.mp4", "cascade.mp4", "side_by_side.mp4", "frames_serial.npy",
                                 "frames_cascade.npy", "timeline.json", "stats.json"}
    assert all(path.parent == folder and path.stat().st_size > 0 for path in result.files.values())
    assert result.stats["speedup"] == result.stats["serial"]["latency_s"] / result.stats["cascade"]["latency_s"]
    assert result.stats["ideal_speedup"] == result.stats["plan"]["bound"]
    assert result.stats["tick_ratio"] == result.stats["serial"]["ticks"] / result.stats["cascade"]["ticks"]
    assert "analyzer" not in result.stats["quality"]  # random weights: the world's judge would be meaningless


def test_the_sequence_run_reports_its_measured_communication_and_both_bounds_on_the_page(service):
    """The tokens run's collectives are timed per tick and worker; its plan carries the bound with
    free communication (W) and the one with what it measured (a worker's mean), on its recorded numbers."""
    request = replace(SMALL, executor="distributed", workers=2, runs=("serial", "cascade", "sequence"))
    stats = service.compare(request).stats
    serial, sequence, plan = stats["serial"], stats["sequence"], stats["sequence_plan"]
    by_worker = sequence["communication_s_by_worker"]
    assert len(by_worker) == 2 and 0 < min(by_worker) and max(by_worker) == sequence["communication_s"]
    assert sequence["communication_s"] < sequence["latency_s"] and sequence["communication_bytes"] > 0
    assert plan["mean_communication_s"] == sum(by_worker) / 2 and plan["bound"] == 2
    latency = serial["latency_s"]
    assert plan["bound_with_communication"] == latency / (latency / 2 + plan["mean_communication_s"])
    assert plan["bound_with_communication"] < plan["bound"]
    line = speedup_markdown(stats).split("Sequence parallel:", 1)[1]
    assert f"at most {plan['bound_with_communication']:.2f}× with the {plan['mean_communication_s']:.2f} s" in line
    assert (f"the busiest {sequence['communication_s']:.2f} s, "
            f"{100 * sequence['communication_s'] / sequence['latency_s']:.0f}% of its latency") in line


def test_the_sequence_bounds_take_bwcaches_cut_and_the_measured_communication():
    model = load_model("random-tiny")
    request = replace(SMALL, executor="distributed", workers=2).resolved(model)
    plain = {"latency_s": 2.0, "bwcache": {"enabled": False}}
    cached = {"latency_s": 0.8, "communication_s": 0.375, "communication_s_by_worker": [0.125, 0.375],
              "bwcache": {"enabled": True, "block_computation_reduction": 1.5}}
    figures = sequence_figures(request, model, plain, cached)
    assert (figures["bound"], figures["bwcache_cut"], figures["mean_communication_s"]) == (3.0, 1.5, 0.25)
    assert figures["bound_with_communication"] == 2.0 / (2.0 / 3.0 + 0.25)  # the workers' mean, not the busiest
    free = sequence_figures(request, model, plain, {**cached, "communication_s_by_worker": [0.0, 0.0]})
    assert free["bound_with_communication"] == free["bound"] == 3.0


def test_videos_written_block_by_block_during_the_runs_equal_encoding_each_whole_video(service, tmp_path):
    result = service.compare(SMALL)
    for run in ("serial", "cascade"):
        frames = getattr(result, run).frames
        whole = write_mp4(frames, tmp_path / f"{run}.mp4", fps=load_model("random-tiny").fps, scale=view_scale(frames.shape[1]))
        assert same_video(result.files[f"{run}.mp4"], whole)
    single = service.generate(replace(SMALL, mode="serial"))
    assert same_video(single.files["video.mp4"], result.files["serial.mp4"])


@pytest.mark.parametrize("threads, streamed", [(1, True), (None, False)])
def test_a_run_on_every_core_has_its_video_encoded_after_it_and_one_on_fewer_during_it(
        service, monkeypatch, threads, streamed):
    """One thread on a 2-core box leaves ffmpeg a core: each block is handed to the writer as it
    is final. A run on every core (threads None: torch's all) hands its blocks on only when it is
    over, so encoding never slows a timed run. The video is the same either way."""
    monkeypatch.setattr(cascade.backend.pool, "usable_cores", lambda: 2)
    events = []
    real_add = Mp4Writer.add
    monkeypatch.setattr(Mp4Writer, "add", lambda writer, frames: (events.append("written"), real_add(writer, frames)))
    request = replace(SMALL, mode="serial", threads=threads)
    result = service.generate(request, on_block=lambda *_: events.append("final"))
    blocks = ["written", "final"] * 3 if streamed else ["final"] * 3 + ["written"] * 3
    assert events == blocks
    frames = result.frames
    assert same_video(result.files["video.mp4"], write_mp4(frames, service.output_root / "whole.mp4",
                                                           fps=load_model("random-tiny").fps,
                                                           scale=view_scale(frames.shape[1])))


def test_a_pool_of_one_thread_per_core_leaves_no_core_free_and_a_gpu_always_does(monkeypatch):
    monkeypatch.setattr(cascade.backend.pool, "usable_cores", lambda: 4)
    pool = SimpleNamespace(workers=2, threads=2)
    assert not leaves_a_core_free(pool, "cpu") and leaves_a_core_free(pool, "cuda")
    assert leaves_a_core_free(SimpleNamespace(workers=3, threads=1), "cpu")
    assert not leaves_a_core_free(SimpleNamespace(threads=None), "cpu")


def same_video(a, b) -> bool:
    (size_a, frames_a), (size_b, frames_b) = read_mp4(a), read_mp4(b)
    return size_a == size_b and np.array_equal(frames_a, frames_b)


def test_compare_on_tiny_shapes_asks_the_models_world_for_its_verdict(service):
    result = service.compare(replace(SMALL, model=None, executor="batched"))
    assert result.stats["serial"]["model"] == "tiny-shapes"
    verdicts = result.stats["quality"]["analyzer"]
    assert {"colour", "shape", "motion", "one_object"} <= set(verdicts["serial"]) == set(verdicts["cascade"])


def test_expired_folders_are_swept_when_a_new_one_is_made(tmp_path):
    with Service(output_root=tmp_path, ttl_s=60, device="cpu") as service:
        first = service.generate(SMALL).files["stats.json"].parent
        old = time.time() - 120
        os.utime(first, (old, old))
        keep = tmp_path / "not-ours"
        keep.mkdir()
        os.utime(keep, (old, old))
        second = service.generate(SMALL).files["stats.json"].parent
    assert not first.exists() and second.exists() and keep.exists()


def test_close_leaves_no_worker_process_and_no_shared_memory_file(tmp_path):
    before = set(SHARED_MEMORY.iterdir()) if SHARED_MEMORY.exists() else set()
    service = Service(output_root=tmp_path, device="cpu")
    pool_request = replace(SMALL, executor="distributed", workers=2)
    result = service.compare(pool_request)
    assert result.stats["cascade"]["executor"] == "distributed"
    (pool,) = service._pools.values()
    pids = pool.worker_pids
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    service.close()
    assert not any(alive(pid) for pid in pids)
    after = set(SHARED_MEMORY.iterdir()) if SHARED_MEMORY.exists() else set()
    assert after <= before
    with pytest.raises(RuntimeError, match="closed"):
        service.generate(SMALL)


def test_warm_up_starts_what_the_request_uses_and_writes_nothing_to_keep(service):
    service.warm_up(replace(SMALL, executor="distributed", workers=2))
    (pool,) = service._pools.values()
    started = pool.worker_pids
    assert len(started) == 2 and all(alive(pid) for pid in started)  # started, not merely made
    assert not service.output_root.exists() or not any(service.output_root.iterdir())
    result = service.compare(replace(SMALL, executor="distributed", workers=2))
    (used,) = service._pools.values()
    assert used is pool and used.worker_pids == started  # the comparison ran on the warmed-up pool
    assert (result.stats["cascade"]["executor"], result.stats["cascade"]["workers"]) == ("distributed", 2)


def test_unset_settings_take_the_models_then_the_fallback_defaults():
    model = load_model("random-tiny")
    plain = GenerateRequest(prompt="x", mode="cascade").resolved(model)
    assert (plain.blocks, plain.steps, plain.window, plain.stride, plain.recache, plain.joint) == (
        8, 4, 5, 1, True, False)  # no quality table: a quarter of the steps; every block that can fill
    model.run_defaults = {"blocks": 5, "window": 5, "stride": 1, "joint": True, "recache": False}
    own = GenerateRequest(prompt="x", mode="cascade").resolved(model)
    assert (own.blocks, own.window, own.stride, own.joint, own.recache) == (5, 5, 1, True, False)
    asked = GenerateRequest(prompt="x", mode="cascade", blocks=2, joint=False).resolved(model)
    assert (asked.blocks, asked.joint) == (2, False)
    assert GenerateRequest(prompt="x", steps=16).resolved(load_model("random-tiny")).stride == 4


BLOCKS_FOR_ONE_FORWARD = ("placement blocks runs each worker's own blocks item by item, but this run has ticks that "
                          "are one forward of several blocks (a joint cascade, or a serial run's switch pass): use "
                          "placement tokens, or leave placement unset")


def test_a_pool_runs_ticks_of_one_forward_on_the_tokens_placement_and_the_rest_on_blocks():
    """Left unset, a pool's placement is blocks, but tokens for a run with ticks of one forward of
    several blocks (a joint cascade, a serial switch pass over two blocks or more), which the blocks
    placement cannot run: set to blocks, such a run is refused in one line."""
    model = load_model("random-tiny")
    pool = replace(SMALL, executor="distributed", workers=2)
    assert pool.placement is None and replace(pool, mode="cascade").resolved(model).placement == "blocks"
    joint = replace(pool, mode="cascade", joint=True).resolved(model)
    assert (joint.joint, joint.placement) == (True, "tokens")
    switch = replace(pool, mode="serial", prompt="", prompt_schedule=((0, "a red ball"), (2, "a blue box")))
    assert switch.resolved(model).placement == "tokens"  # blocks 0 and 1 re-encoded in one forward
    one_block = replace(switch, prompt_schedule=((0, "a red ball"), (1, "a blue box")))
    assert one_block.resolved(model).placement == "blocks"  # block 0 alone: an ordinary item
    assert replace(SMALL, mode="cascade", joint=True).resolved(model).placement == "blocks"  # one device
    with pytest.raises(ValueError) as joint_refused:
        replace(pool, mode="cascade", joint=True, placement="blocks").validate()  # before the model is loaded
    with pytest.raises(ValueError) as switch_refused:
        replace(switch, placement="blocks").resolved(model)
    assert str(joint_refused.value) == str(switch_refused.value) == BLOCKS_FOR_ONE_FORWARD
    model.run_defaults = {"mode": "cascade", "window": 6, "stride": 1, "joint": True, "recache": True}  # Rolling Forcing's
    own = replace(pool, mode=None, blocks=7, window=None, stride=None).resolved(model)
    assert (own.mode, own.window, own.stride, own.joint, own.placement) == ("cascade", 6, 1, True, "tokens")
    with pytest.raises(ValueError) as default_refused:
        replace(pool, mode=None, window=None, stride=None, placement="blocks").resolved(model)
    assert str(default_refused.value) == BLOCKS_FOR_ONE_FORWARD


def test_loading_a_model_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_model("random-tiny")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("changes, message", [
    (dict(prompt=""), "the prompt is empty"),
    (dict(prompt="x" * 2001), "the prompt is 2001 characters long; the limit is 2000"),
    (dict(steps=0), "steps must be a whole number of at least 1, got 0"),
    (dict(window=0), "window must be a whole number of at least 1, got 0"),
    (dict(stride=-1), "stride must be a whole number of at least 1, got -1"),
    (dict(blocks=2.5), "blocks must be a whole number of at least 1, got 2.5"),
    (dict(bwcache_threshold=float("nan")), "bwcache_threshold must be a number of at least 0, got nan"),
    (dict(executor="gpu"), "executor must be one of local, batched, distributed, got 'gpu'"),
    (dict(kv_exchange="pigeon"), "kv_exchange must be one of auto, shared_memory, broadcast, got 'pigeon'"),
])
def test_bad_values_are_refused_with_one_clear_line(service, changes, message):
    with pytest.raises(ValueError) as error:
        service.compare(replace(SMALL, **changes))
    assert str(error.value) == message

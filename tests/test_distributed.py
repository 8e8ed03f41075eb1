"""DistributedExecutor against LocalExecutor as the oracle: a 2-worker gloo pool on the CPU.

One pool serves the whole module (spawning workers costs seconds), in file order: equivalence
runs, reuse, refused jobs, a killed worker (the pool restarts), clean close; then the torchrun
form. Tiny model, few blocks and steps, one thread per worker.
"""

import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade.backend import LocalExecutor
from cascade.backend.kv_exchange import RING_SLOTS, owner
from cascade.backend.pool import DistributedExecutor
from cascade.caching import BWCacheConfig, bw_cache_stats
from cascade.model import CausalWanTransformer
from cascade.model.presets import TINY, PresetLoader, load_model
from cascade.pipeline import BlockCausalPipeline, DenoiseJob
from cascade.schedule import make_schedule
from process_checks import alive

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
BLOCKS, STEPS, SEED = 3, 2, 3
PROMPT = "a red ball"
SCHEDULES = {
    "serial": make_schedule(BLOCKS, STEPS),
    "cascade-window2-recache": make_schedule(BLOCKS, STEPS, window=2, stride=1, recache=True),
    "cascade-window4-no-recache": make_schedule(BLOCKS + 1, STEPS, window=4, stride=1, recache=False),
    # worker 0 posts all of block 0 before worker 1 reads any: more postings than the shared ring has slots
    "serial-more-steps-than-ring-slots": make_schedule(BLOCKS, RING_SLOTS + 2),
}
# The README's promise, checked on the machine itself rather than through the pool's own check: a
# CPU pool on one x86-64 Linux host with a writable /dev/shm moves K/V through shared memory.
SHARED_MEMORY = sys.platform == "linux" and platform.machine() == "x86_64" and os.access("/dev/shm", os.W_OK)
LOADER = PresetLoader("random-tiny")


@pytest.fixture(scope="module")
def model():
    return load_model("random-tiny")


@pytest.fixture(scope="module")
def pool():
    with DistributedExecutor(LOADER, workers=WORKERS, threads_per_worker=1) as executor:
        yield executor


def generate(model, schedule, executor, **kwargs):
    return BlockCausalPipeline(model)(PROMPT, schedule, executor, seed=SEED, **kwargs)


def local_latents(model, schedule) -> torch.Tensor:
    return generate(model, schedule, LocalExecutor(threads=1)).latents


def make_job(model, schedule, transformer=None) -> DenoiseJob:
    text, _ = model.encode_text([PROMPT])
    return DenoiseJob(transformer=transformer or model.transformer, text=text, sampler=model.sampler.with_steps(STEPS),
                      layout=model.layout, num_blocks=schedule.num_blocks, seed=SEED)


@pytest.mark.parametrize("name", SCHEDULES)
def test_pool_equals_local_executor(model, pool, name):
    schedule = SCHEDULES[name]
    fractions = []
    out = generate(model, schedule, pool, progress=lambda fraction, _: fractions.append(fraction))
    assert (out.latents - local_latents(model, schedule)).abs().max().item() <= 1e-4
    assert out.executor == "distributed" and out.workers == WORKERS
    assert out.model_calls == schedule.num_items
    assert fractions[-1] == 1.0 and len(fractions) == schedule.num_ticks

    ran = sorted((e.block, str(e.step)) for e in out.timeline)
    assert ran == sorted((i.block, str(i.step)) for tick in schedule.ticks for i in tick)
    assert all(e.worker == owner(e.block, WORKERS) for e in out.timeline)
    assert all(0 <= e.start <= e.end for e in out.timeline)
    # One clock for all workers: an item starts only after every item of a lower block in the
    # previous tick ended (the K/V it reads), whichever worker ran it.
    tick_of = {(i.block, i.step): t for t, tick in enumerate(schedule.ticks) for i in tick}
    for e in out.timeline:
        t = tick_of[(e.block, e.step)]
        context = [p.end for p in out.timeline if tick_of[(p.block, p.step)] == t - 1 and p.block < e.block]
        assert all(end <= e.start for end in context)


# BWCache thresholds on random-tiny's indicator (1.09-1.29 and 1.33-1.36 at 8 steps): one in the
# gap, which reuses some steps and computes others, and one that forces reuse wherever the rules allow.
BWCACHE_THRESHOLDS = (1.31, float("inf"))


@pytest.mark.parametrize("threshold", BWCACHE_THRESHOLDS)
@pytest.mark.parametrize("name", ["serial", "cascade-window2-recache"])
def test_bwcache_gives_the_same_frames_and_reuse_decisions_on_every_executor(model, pool, name, threshold):
    schedule = make_schedule(BLOCKS, 8) if name == "serial" else make_schedule(BLOCKS, 8, window=2, stride=1)
    config = BWCacheConfig(8, threshold=threshold)
    runs = {executor.name: generate(model, schedule, executor, bwcache=config)
            for executor in (LocalExecutor(threads=1), LocalExecutor(batched=True, threads=1), pool)}
    local = runs["local"]
    decisions = [(e[0], e[1]) for e in local.bwcache["indicator"]]
    assert 0 < local.bwcache["reused"] < local.bwcache["forwards"]
    for name, run in runs.items():
        assert (run.latents - local.latents).abs().max().item() <= 1e-4, name
        for key in ("forwards", "computed", "reused", "block_computations_skipped"):
            assert run.bwcache[key] == local.bwcache[key], (name, key)
        assert [(e[0], e[1]) for e in run.bwcache["indicator"]] == decisions, name
        assert np.allclose([e[2] for e in run.bwcache["indicator"]], [e[2] for e in local.bwcache["indicator"]],
                           atol=1e-4), name
    with pytest.raises(ValueError, match="not applied"):  # the hooks are gone after the run
        bw_cache_stats(model.transformer, "any")


@pytest.mark.parametrize("name", ["serial", "cascade-window2-recache"])
def test_a_rolling_anchor_gives_the_same_video_on_every_executor(model, pool, name):
    """Rolling Forcing's attention (its sink moved next to each denoising forward, its cache passes
    seeing the most recent frames) lives in every worker's own cache: the pool gives the local
    video, which differs from the one without those rules. A window of 3 frames after 3 sinks
    makes them matter from the third block on."""
    blocks = 5
    schedule = make_schedule(blocks, STEPS, **({} if name == "serial" else dict(window=2, stride=1)))

    def job(anchor: bool) -> DenoiseJob:
        return dataclasses.replace(make_job(model, schedule), local_window=3, sink_frames=3, rolling_anchor=anchor)

    local = torch.cat(LocalExecutor(threads=1).execute(job(True), schedule).latents, dim=2)
    pooled = torch.cat(pool.execute(job(True), schedule).latents, dim=2)
    without = torch.cat(LocalExecutor(threads=1).execute(job(False), schedule).latents, dim=2)
    assert (pooled - local).abs().max().item() <= 1e-4
    assert (without - local).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", ["serial", "cascade-window2-recache"])
def test_pool_hands_on_every_block_in_order_as_it_finishes(model, pool, name):
    schedule = SCHEDULES[name]
    handed = []
    out = generate(model, schedule, pool, on_block=lambda block, frames, t: handed.append((block, frames, t)))
    assert [block for block, _, _ in handed] == list(range(BLOCKS))
    assert np.array_equal(np.concatenate([frames for _, frames, _ in handed]), model.decode(out.latents))
    assert [t for _, _, t in handed] == sorted(t for _, _, t in handed) == out.shown_s
    last_step_end = max(e.end for e in out.timeline if e.block == 0 and e.step == STEPS - 1)
    assert handed[0][2] >= last_step_end


def kv_files_mapped(pids: list[int]) -> list[set[str]]:
    """Per process, the K/V exchange's files in /dev/shm it maps: what the kernel says, not the pool."""
    return [{line.split(maxsplit=5)[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
             if " /dev/shm/cascade-kv-" in line} for pid in pids]


@pytest.mark.skipif(not SHARED_MEMORY, reason="shared memory is the promise for one x86-64 Linux host")
def test_pool_on_one_host_exchanges_kv_through_shared_memory(model, pool):
    generate(model, SCHEDULES["serial"], pool)  # a run maps the exchange
    mapped = kv_files_mapped(pool.worker_pids)
    assert pool.kv_exchange == "shared_memory"
    assert mapped[0] == mapped[1] and len(mapped[0]) == 1 + WORKERS  # the counters and every worker's slots


def test_broadcast_exchange_gives_the_same_video(model):
    schedule = SCHEDULES["cascade-window2-recache"]
    with DistributedExecutor(LOADER, workers=WORKERS, threads_per_worker=1, kv_exchange="broadcast") as pool:
        out = generate(model, schedule, pool)
        assert pool.kv_exchange == "broadcast"
        if SHARED_MEMORY:
            assert kv_files_mapped(pool.worker_pids) == [set()] * WORKERS
    assert (out.latents - local_latents(model, schedule)).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="kv_exchange"):
        DistributedExecutor(LOADER, kv_exchange="carrier-pigeon")


def test_owners_far_ahead_of_their_readers_never_deadlock(model):
    """Window 2, far more steps than the shared ring has slots: each worker posts a block's K/V
    every tick while the other reads them only when its next block starts. Had a waiting worker
    stopped copying out, both would end up waiting for the other to free a slot (this schedule
    did that before waiting workers drained what was published); now it must finish."""
    schedule = make_schedule(3, 3 * RING_SLOTS, window=2, stride=1)
    with DistributedExecutor(LOADER, workers=WORKERS, threads_per_worker=1, collective_timeout_s=30) as pool:
        out = generate(model, schedule, pool)
    assert (out.latents - local_latents(model, schedule)).abs().max().item() <= 1e-4


def test_each_tick_exchanges_the_kv_of_its_blocks(model, pool):
    schedule = SCHEDULES["cascade-window2-recache"]
    result = pool.execute(make_job(model, schedule), schedule)
    tiny = model.transformer.config
    tokens_per_block = 3 * (model.layout.height // 8) * (model.layout.width // 8)
    kv_bytes_per_block = 2 * tiny.num_layers * tokens_per_block * tiny.num_attention_heads * tiny.attention_head_dim * 4
    assert [(c.tick, c.worker) for c in result.communication] == [
        (t, w) for t in range(schedule.num_ticks) for w in range(WORKERS)]
    for c in result.communication:
        blocks = [i.block for i in schedule.ticks[c.tick]]
        mine = sum(owner(b, WORKERS) == c.worker for b in blocks)
        assert c.sent_bytes == mine * kv_bytes_per_block
        assert c.received_bytes == (len(blocks) - mine) * kv_bytes_per_block
    assert all(x.device.type == "cpu" for x in result.latents)


def test_each_worker_posts_after_its_items_and_reads_what_others_posted(model, pool):
    """On the workers' one clock: a worker posts a tick's K/V after its items of that tick and before
    any of its later ones; it was blocked at most the idle time before its items (none in a tick
    where it runs nothing); an item starts only after every other owner of a lower block in an
    earlier tick posted that tick."""
    schedule = SCHEDULES["cascade-window4-no-recache"]
    result = pool.execute(make_job(model, schedule), schedule)
    tick_of = {(i.block, i.step): t for t, tick in enumerate(schedule.ticks) for i in tick}
    posted = {(c.tick, c.worker): c.posted for c in result.communication}
    for c in result.communication:
        own = [e for e in result.timeline if e.worker == c.worker]
        mine = sorted((e for e in own if tick_of[(e.block, e.step)] == c.tick), key=lambda e: e.start)
        later = [e.start for e in own if tick_of[(e.block, e.step)] > c.tick]
        assert max((e.end for e in mine), default=0.0) <= c.posted <= min(later, default=float("inf"))
        idle_before = [posted.get((c.tick - 1, c.worker), 0.0)] + [e.end for e in mine[:-1]]
        assert 0.0 <= c.blocked_s <= sum(e.start - idle for e, idle in zip(mine, idle_before)) + 1e-9
    for e in result.timeline:
        read = [posted[(t, owner(i.block, WORKERS))] for t in range(tick_of[(e.block, e.step)])
                for i in schedule.ticks[t] if i.block < e.block and owner(i.block, WORKERS) != e.worker]
        assert all(p <= e.start for p in read)


def test_a_stalled_worker_does_not_hold_up_the_owner_of_the_lowest_block(model, pool):
    """No tick-wide barrier: block 0's items read nobody's K/V, so while worker 1 is stopped
    (SIGSTOP) worker 0 runs on, starting items of later ticks before worker 1's item of an earlier
    tick has ended. Under a barrier each tick would start only once every item of the last ended."""
    schedule = make_schedule(2, 3 * RING_SLOTS, window=2, stride=1)
    stalled = pool.worker_pids[1]
    resume = threading.Timer(0.5, os.kill, (stalled, signal.SIGCONT))  # long enough for worker 0 to run on

    def stall_worker_1(fraction, message):  # worker 0 has posted its first tick
        if resume.ident is None:
            os.kill(stalled, signal.SIGSTOP)
            resume.start()

    try:
        out = generate(model, schedule, pool, progress=stall_worker_1)
    finally:
        resume.cancel()
        os.kill(stalled, signal.SIGCONT)
    assert resume.ident is not None  # it was stopped
    tick_of = {(i.block, i.step): t for t, tick in enumerate(schedule.ticks) for i in tick}
    ahead = [(a, c) for a in out.timeline if a.worker == 0 for c in out.timeline
             if c.worker == 1 and tick_of[(a.block, a.step)] > tick_of[(c.block, c.step)] and a.start < c.end]
    assert ahead
    assert (out.latents - local_latents(model, schedule)).abs().max().item() <= 1e-4


def test_pool_is_reused_across_runs(model, pool):
    pids = pool.worker_pids
    schedule = SCHEDULES["serial"]
    first = generate(model, schedule, pool)
    second = generate(model, schedule, pool)
    assert pool.worker_pids == pids and all(alive(pid) for pid in pids)
    assert torch.equal(first.latents, second.latents)


def test_refused_jobs_leave_the_pool_running(model, pool):
    pids = pool.worker_pids
    schedule = SCHEDULES["cascade-window2-recache"]
    with pytest.raises(ValueError, match="^a joint job runs each tick as one forward of its blocks, which the blocks "
                                         "placement spreads over workers: use placement tokens$"):
        pool.execute(dataclasses.replace(make_job(model, schedule), joint=True), schedule)
    torch.manual_seed(1)
    other = CausalWanTransformer(**TINY).eval()
    with pytest.raises(ValueError, match="weights differ"):
        pool.execute(make_job(model, schedule, transformer=other), schedule)
    assert pool.worker_pids == pids and all(alive(pid) for pid in pids)


def test_killed_worker_fails_the_run_and_the_pool_restarts(model, pool):
    """How soon it fails is test_faults.py's promise (KILLED_BAR_S); here: the error, then a fresh pool."""
    schedule = SCHEDULES["cascade-window2-recache"]
    old_pids, killed = pool.worker_pids, []

    def kill_worker_1(fraction, message):
        if not killed:
            os.kill(old_pids[1], signal.SIGKILL)
            killed.append(old_pids[1])

    with pytest.raises(RuntimeError, match=r"worker 1 \(pid \d+, cpu\) died: killed by signal SIGKILL"):
        generate(model, schedule, pool, progress=kill_worker_1)
    assert not any(alive(pid) for pid in old_pids)

    again = generate(model, schedule, pool)
    assert set(pool.worker_pids).isdisjoint(old_pids)
    assert (again.latents - local_latents(model, schedule)).abs().max().item() <= 1e-4


def test_close_stops_every_worker(model, pool):
    pids = pool.worker_pids
    assert len(pids) == WORKERS and all(alive(pid) for pid in pids)
    pool.close()
    assert pool.worker_pids == [] and not any(alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        generate(model, SCHEDULES["serial"], pool)


def torchrun(folder: Path, *options: str) -> tuple[torch.Tensor, dict]:
    """The latents and stats of ``cascade.torchrun`` on WORKERS CPU ranks."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORKERS}",
        "-m", "cascade.torchrun", "--model", "random-tiny", "--prompt", PROMPT, "--blocks", str(BLOCKS),
        "--steps", str(STEPS), "--seed", str(SEED), "--device", "cpu", "--threads", "1", "--out", str(folder), *options,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (folder / "video.mp4").stat().st_size > 0
    return torch.from_numpy(np.load(folder / "latents.npy")), json.loads((folder / "stats.json").read_text())


def test_torchrun_generates_the_same_video(model, tmp_path):
    schedule = make_schedule(BLOCKS, STEPS, window=2, stride=1)
    latents, stats = torchrun(tmp_path, "--window", "2", "--stride", "1")
    assert (latents - local_latents(model, schedule)).abs().max().item() <= 1e-4
    assert stats["workers"] == WORKERS and stats["forwards"] == schedule.num_items
    assert stats["kv_exchange"] == ("shared_memory" if SHARED_MEMORY else "broadcast")
    assert stats["placement"] == "blocks"
    assert {e["worker"] for e in stats["timeline"]} == set(range(WORKERS))


def test_torchrun_plans_a_joint_cascade_onto_the_tokens_placement(model, tmp_path):
    """A joint tick is one forward of its blocks, which only the tokens placement runs: planned so."""
    schedule = make_schedule(BLOCKS, STEPS, window=2, stride=1, joint=True)
    latents, stats = torchrun(tmp_path, "--window", "2", "--stride", "1", "--joint")
    oracle = generate(model, schedule, LocalExecutor(threads=1), joint=True)
    assert (latents - oracle.latents).abs().max().item() <= 1e-4
    assert stats["placement"] == "tokens" and stats["joint"] is True
    assert stats["model_calls"] == oracle.model_calls == schedule.num_ticks  # one forward per tick, as on one device


RANKS_WITHOUT_SHARED_MEMORY = """
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from cascade.backend import kv_exchange
from cascade.backend.rank import RankExecutor
from cascade.model.presets import load_model
from cascade.pipeline import BlockCausalPipeline
from cascade.schedule import make_schedule

dist.init_process_group("gloo")
out = Path(sys.argv[1])
# Each rank gets its own directory, as containers with their own /dev/shm on one kernel would.
kv_exchange.SHARED_MEMORY_DIR = out / f"shm-of-rank-{dist.get_rank()}"
kv_exchange.SHARED_MEMORY_DIR.mkdir()
executor = RankExecutor("cpu")
schedule = make_schedule(%(blocks)d, %(steps)d, window=2, stride=1)
latents = BlockCausalPipeline(load_model("random-tiny"))(%(prompt)r, schedule, executor, seed=%(seed)d).latents
if dist.get_rank() == 0:
    np.save(out / "latents.npy", latents.numpy())
    (out / "exchange.txt").write_text(executor.kv_exchange)
dist.destroy_process_group()
"""


@pytest.mark.skipif(not SHARED_MEMORY, reason="the fallback from shared memory needs a host that has it")
def test_ranks_that_cannot_share_memory_fall_back_to_broadcasts(model, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_WITHOUT_SHARED_MEMORY % dict(blocks=BLOCKS, steps=STEPS, prompt=PROMPT, seed=SEED))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORKERS}",
               str(script), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "exchange.txt").read_text() == "broadcast"
    latents = torch.from_numpy(np.load(tmp_path / "latents.npy"))
    schedule = make_schedule(BLOCKS, STEPS, window=2, stride=1)
    assert (latents - local_latents(model, schedule)).abs().max().item() <= 1e-4
    assert not any(tmp_path.glob("shm-of-rank-*/*"))  # nothing left behind

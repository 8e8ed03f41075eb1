"""The pool's ``tokens`` placement (sequence parallelism) against the local serial run as the oracle.

Two workers of a gloo pool run Ulysses attention (the tiny model's 4 heads divide by 2), three
torchrun ranks Ring attention (they do not divide by 3); each with every frame's tokens shared
evenly and unevenly (64×64 pixels make 64 tokens per frame, 56×56 make 49, 48×64 make 48), under
global attention and under a local window with a sink frame, with and without BWCache.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade.backend import LocalExecutor
from cascade.caching import BWCacheConfig
from cascade.model.context_parallel import frame_shares
from cascade.pipeline import BlockCausalPipeline
from cascade.plan import PlanBackend, bound, bound_with_communication
from cascade.schedule import make_schedule
from cascade.service import GenerateRequest
from process_checks import alive
from test_distributed import WORKERS, model, pool  # noqa: F401 (the random-tiny model and its 2-worker pool)

REPO = Path(__file__).resolve().parent.parent
BLOCKS, STEPS, BWCACHE_STEPS, SEED = 3, 2, 8, 3
PROMPT = "a red ball"
PIXELS = {"64 tokens": (64, 64), "49 tokens": (56, 56), "48 tokens": (48, 64)}  # per frame, patch 8×8
# a window of 4 frames and 1 sink frame: with 3-frame blocks it cuts earlier blocks part-way
ATTENTION = {"global": (None, 0), "window 4 + 1 sink": (4, 1)}


def variant(model, pixels: str, attention: str):
    """The same weights on a video of other frame sizes and attention (the job carries both to the workers)."""
    height, width = PIXELS[pixels]
    window, sinks = ATTENTION[attention]
    return dataclasses.replace(model, layout=dataclasses.replace(model.layout, height=height, width=width),
                               local_window=window, sink_frames=sinks)


def generate(model, schedule, executor, bwcache=None):
    return BlockCausalPipeline(model)(PROMPT, schedule, executor, seed=SEED, bwcache=bwcache)


def local(model, schedule, bwcache=None):
    return generate(model, schedule, LocalExecutor(threads=1), bwcache)


def separating_threshold(model, schedule) -> float:
    """A BWCache threshold amid the local run's indicator values: some steps reuse, some compute,
    so the decisions depend on the indicator's value."""
    values = sorted(e[2] for e in local(model, schedule, BWCacheConfig(schedule.num_steps, threshold=0.0))
                    .bwcache["indicator"])
    return (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2


def assert_same_run(out, oracle, schedule, workers):
    assert (out.latents - oracle.latents).abs().max().item() <= 1e-4
    assert out.model_calls == schedule.num_items and out.workers == workers
    items = sorted((i.block, str(i.step)) for tick in schedule.ticks for i in tick)
    for worker in range(workers):  # every worker ran every item
        assert sorted((e.block, str(e.step)) for e in out.timeline if e.worker == worker) == items


def assert_same_bwcache(run, oracle):
    assert 0 < oracle["reused"] < oracle["forwards"]
    for key in ("forwards", "computed", "reused", "block_computations_skipped"):
        assert run[key] == oracle[key], key
    assert [e[:2] for e in run["indicator"]] == [e[:2] for e in oracle["indicator"]]
    assert np.allclose([e[2] for e in run["indicator"]], [e[2] for e in oracle["indicator"]], atol=1e-4)


def test_frame_shares_are_tensor_splits():
    for tokens, ranks in ((64, 2), (49, 2), (64, 3), (48, 3), (5, 5)):
        shares = frame_shares(tokens, ranks)
        assert shares == [len(part) for part in torch.arange(tokens).tensor_split(ranks)]


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("pixels", ["64 tokens", "49 tokens"])
def test_tokens_give_the_local_serial_latents(model, pool, pixels, attention):
    video = variant(model, pixels, attention)
    schedule = make_schedule(BLOCKS, STEPS)
    out = generate(video, schedule, pool.placed("tokens"))
    assert_same_run(out, local(video, schedule), schedule, WORKERS)
    assert_tokens_traffic(out, schedule, video, WORKERS)


# random-tiny: 6 layers of 4 heads × 48 dimensions (192 in all), float32; 3 latent frames per block
LAYERS, HEADS, HEAD_DIM, FLOAT_BYTES, FRAMES = 6, 4, 48, 4, 3


def ulysses_forward_payload(shares: list[int], rank: int) -> int:
    """Bytes one rank sends in a forward of one block on Ulysses: in each layer the other ranks'
    heads of its tokens of Q, K and V, and its heads of their tokens of the output; then its tokens
    of the last block's output, to be gathered."""
    mine, others = FRAMES * shares[rank], FRAMES * (sum(shares) - shares[rank])
    own_heads = HEADS // len(shares)
    per_layer = (3 * mine * (HEADS - own_heads) + others * own_heads) * HEAD_DIM
    return (LAYERS * per_layer + mine * HEADS * HEAD_DIM) * FLOAT_BYTES


def assert_tokens_traffic(out, schedule, video, workers):
    """One entry per tick and worker; its seconds within that worker's forwards of the tick, its
    payload exactly what Ulysses moves, and (on 2 workers) what one sends, the other receives."""
    assert [(c.tick, c.worker) for c in out.communication] == [
        (tick, worker) for tick in range(schedule.num_ticks) for worker in range(workers)]
    forwards = {(e.worker, tick): e for tick, items in enumerate(schedule.ticks) for e in out.timeline
                if any((e.block, e.step) == (i.block, i.step) for i in items)}
    shares = frame_shares(video.layout.height // 8 * video.layout.width // 8, workers)
    for c in out.communication:
        forward = forwards[(c.worker, c.tick)]
        assert 0 <= c.blocked_s <= forward.end - forward.start
        assert forward.end <= c.posted
        assert c.sent_bytes == ulysses_forward_payload(shares, c.worker)
    for tick in range(schedule.num_ticks):
        entries = [c for c in out.communication if c.tick == tick]
        assert sum(c.sent_bytes for c in entries) == sum(c.received_bytes for c in entries)


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("pixels", ["64 tokens", "49 tokens"])
def test_bwcache_on_tokens_decides_as_the_local_run(model, pool, pixels, attention):
    """The indicator is the gathered features' (each worker sums its share, the sums are added), so
    every worker reuses the same steps as the local run, at a threshold amid its values."""
    video = variant(model, pixels, attention)
    schedule = make_schedule(BLOCKS, BWCACHE_STEPS)
    config = BWCacheConfig(BWCACHE_STEPS, threshold=separating_threshold(video, schedule))
    oracle = local(video, schedule, config)
    out = generate(video, schedule, pool.placed("tokens"), config)
    assert_same_run(out, oracle, schedule, WORKERS)
    assert_same_bwcache(out.bwcache, oracle.bwcache)
    assert out.cross_attention_builds == [1]  # one report speaks for every worker (they agreed)


def test_tokens_run_a_cascade_schedule_as_the_local_executor_does(model, pool):
    schedule = make_schedule(BLOCKS + 1, STEPS, window=2, stride=1, recache=True)
    out = generate(model, schedule, pool.placed("tokens"))
    assert_same_run(out, local(model, schedule), schedule, WORKERS)


def test_blocks_and_tokens_take_turns_on_one_pool(model, pool):
    pids = pool.worker_pids
    schedule = make_schedule(BLOCKS, STEPS)
    oracle = local(model, schedule).latents
    for executor in (pool, pool.placed("tokens"), pool.placed("blocks"), pool.placed("tokens")):
        assert (generate(model, schedule, executor).latents - oracle).abs().max().item() <= 1e-4
    assert pool.worker_pids == pids
    assert pool.placed("blocks") is pool and pool.placed("tokens").placement == "tokens"
    with pytest.raises(ValueError, match="placement must be one of blocks, tokens"):
        pool.placed("rows")


def test_killed_worker_fails_a_tokens_run_and_the_pool_restarts(model, pool):
    schedule = make_schedule(BLOCKS, STEPS)
    old_pids, killed = pool.worker_pids, []

    def kill_worker_1(fraction, message):
        if not killed:
            os.kill(old_pids[1], signal.SIGKILL)
            killed.append(old_pids[1])

    with pytest.raises(RuntimeError, match=r"worker 1 \(pid \d+, cpu\) died: killed by signal SIGKILL") as failure:
        BlockCausalPipeline(model)(PROMPT, schedule, pool.placed("tokens"), seed=SEED, progress=kill_worker_1)
    assert str(failure.value).splitlines()[0].count("died") == 1
    assert not any(alive(pid) for pid in old_pids)
    again = generate(model, schedule, pool.placed("tokens"))
    assert set(pool.worker_pids).isdisjoint(old_pids)
    assert (again.latents - local(model, schedule).latents).abs().max().item() <= 1e-4


def test_the_attentions_communication_leaves_out_its_forward_ops_time(monkeypatch):
    """What the templated attention spends outside the forward op it calls is communication; the
    op's own time (here a 0.3 s stand-in) is not."""
    from cascade.model import context_parallel

    def templated(query, key, value, forward_op, backward_op, _parallel_config):
        time.sleep(0.01)  # the exchange
        return forward_op(None, query, key, value)

    monkeypatch.setattr(context_parallel, "_templated_context_parallel_attention", templated)
    monkeypatch.setattr(context_parallel, "_attention_op", lambda ctx, q, k, v, *a, **kw: time.sleep(0.3) or q)
    ring = object.__new__(context_parallel.TokenParallel)  # rank 0 of 2, Ring, 2 of 4 tokens per frame
    ring.kind, ring.ranks, ring.rank, ring.shares, ring.config = context_parallel.RING, 2, 0, [2, 2], None
    ring.device, ring._traffic = torch.device("cpu"), context_parallel.Traffic()
    query = key = value = torch.zeros(1, 2, 2, 4)
    ring.attention(lambda k, v: (k, v, None), query, key, value, frames=1)
    spent = ring.traffic()
    assert 0.01 <= spent.seconds < 0.3
    assert (spent.sent, spent.received) == (key.nbytes + value.nbytes, key.nbytes + value.nbytes)  # 2 of 2 tokens
    assert ring.traffic() == context_parallel.Traffic()  # handed on, so the next tick starts from nothing


def test_ulysses_communication_is_its_two_exchanges_not_the_attention_between_them(monkeypatch):
    """Ulysses' time in its two all-to-alls (here 0.01 s stand-ins) is communication; the attention
    between them (a 0.3 s stand-in) is not. Its payload: the others' heads of this rank's Q, K and
    V out, this rank's heads of their tokens back, and the same for the output the other way."""
    from cascade.model import context_parallel

    def exchange(outgoing, sizes, arriving):
        time.sleep(0.01)
        return torch.zeros(sum(arriving))

    monkeypatch.setattr(context_parallel, "_attention_op", lambda ctx, q, k, v, *a, **kw: time.sleep(0.3) or q)
    ulysses = object.__new__(context_parallel.TokenParallel)  # rank 0 of 2, 2 heads, 2 of 4 tokens per frame
    ulysses.kind, ulysses.ranks, ulysses.rank, ulysses.shares = context_parallel.ULYSSES, 2, 0, [2, 2]
    ulysses.device, ulysses._traffic, ulysses._all_to_all = torch.device("cpu"), context_parallel.Traffic(), exchange
    query = key = value = torch.zeros(1, 2, 2, 4)
    out = ulysses.attention(lambda k, v: (k, v, None), query, key, value, frames=1)
    assert out.shape == query.shape
    spent = ulysses.traffic()
    assert 0.02 <= spent.seconds < 0.3
    # 4 dims × 4 bytes per token and head: Q, K, V of 2 tokens × the other head, out: 2 tokens × 1 head
    assert (spent.sent, spent.received) == (16 * (3 * 2 + 2), 16 * (3 * 2 + 2))


def test_a_tokens_request_needs_a_pool():
    with pytest.raises(ValueError, match="placement tokens .* distributed executor"):
        GenerateRequest(prompt="a red ball", placement="tokens").validate()
    with pytest.raises(ValueError, match="placement must be one of blocks, tokens"):
        GenerateRequest(prompt="a red ball", executor="distributed", placement="rows").validate()
    GenerateRequest(prompt="a red ball", executor="distributed", placement="tokens").validate()


def test_the_tokens_bound_is_the_workers_share_of_each_forward():
    serial = make_schedule(BLOCKS, STEPS)
    assert bound(serial, serial, PlanBackend("distributed", 3, placement="tokens")) == 3
    assert bound(serial, serial, PlanBackend("distributed", 3)) == 1  # blocks: a serial schedule gains nothing


def test_the_bound_with_communication_is_serial_over_its_share_plus_the_measured_exchanges():
    # 2.0 s serial, bound 2: 1.0 s of shared compute, plus 0.25 s of communication
    assert bound_with_communication(2.0, 2.0, 0.25) == 2.0 / 1.25
    assert bound_with_communication(2.0, 3.0, 0.0) == 3.0  # free communication: the compute bound
    for latency, compute, communication in ((0.7, 2.0, 0.01), (3.5, 4.0, 1.2), (1.0, 1.5, 10.0)):
        with_communication = bound_with_communication(latency, compute, communication)
        assert with_communication < compute
        assert with_communication == latency / (latency / compute + communication)
    more = [bound_with_communication(1.0, 2.0, c) for c in (0.0, 0.1, 0.2, 0.4)]
    assert more == sorted(more, reverse=True)  # more communication, a lower bound
    with pytest.raises(ValueError, match="no negative communication"):
        bound_with_communication(1.0, 2.0, -0.1)


RANKS = """
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from cascade.backend.rank import RankExecutor
from cascade.caching import BWCacheConfig
from cascade.model.presets import load_model
from cascade.pipeline import BlockCausalPipeline, DenoiseJob
from cascade.schedule import make_schedule

dist.init_process_group("gloo")
out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
base = load_model("random-tiny")
executors = {}
for name, case in cases.items():
    # collective: every rank meets the cases, and so makes its executors, in the same order
    exchange = case.get("kv_exchange", "auto")
    executor = executors.setdefault(exchange, RankExecutor("cpu", exchange, placement="tokens"))
    layout = dataclasses.replace(base.layout, height=case["height"], width=case["width"])
    model = dataclasses.replace(base, layout=layout, local_window=case["window"], sink_frames=case["sinks"])
    bwcache = BWCacheConfig(case["steps"], threshold=case["threshold"]) if case["threshold"] is not None else None
    result = BlockCausalPipeline(model)(%(prompt)r, make_schedule(%(blocks)d, case["steps"]), executor,
                                        seed=%(seed)d, bwcache=bwcache)
    job = DenoiseJob(transformer=model.transformer, text=model.encode_text(["x"])[0], sampler=model.sampler,
                     layout=layout, num_blocks=%(blocks)d, seed=0)
    shape = list(job.new_cache("cpu", tokens=job.token_parallel("cpu")).k.shape)
    shapes = [None] * dist.get_world_size()
    dist.all_gather_object(shapes, shape)
    if dist.get_rank() == 0:
        np.save(out / f"{name}.npy", result.latents.numpy())
        traffic = [[c.tick, c.worker, c.blocked_s, c.sent_bytes] for c in result.communication]
        (out / f"{name}.json").write_text(json.dumps({"bwcache": result.bwcache, "cache_shapes": shapes,
                                                      "workers": result.workers, "traffic": traffic,
                                                      "collectives": executor._tokens.collectives_backend}))
dist.barrier()  # no rank tears its groups down while another still writes
dist.destroy_process_group()
"""


def torchrun_tokens(ranks: int, cases: dict, folder: Path) -> dict:
    script = folder / "ranks.py"
    script.write_text(RANKS % dict(prompt=PROMPT, blocks=BLOCKS, seed=SEED))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(script), str(folder), json.dumps(cases)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: (torch.from_numpy(np.load(folder / f"{name}.npy")), json.loads((folder / f"{name}.json").read_text()))
            for name in cases}


def test_three_ranks_run_ring_attention_and_give_the_local_serial_latents(model, tmp_path):
    """Ring attention on 3 torchrun ranks: every frame's tokens unevenly (64) and evenly (48)
    shared, global and local attention, with BWCache; each rank keeps the K/V of its own tokens."""
    cases, oracles = {}, {}
    for pixels in ("64 tokens", "48 tokens"):
        for attention in ATTENTION:
            for cached in (False, True):
                video = variant(model, pixels, attention)
                steps = BWCACHE_STEPS if cached else STEPS
                schedule = make_schedule(BLOCKS, steps)
                config = BWCacheConfig(steps, threshold=separating_threshold(video, schedule)) if cached else None
                name = f"{pixels}, {attention}{', bwcache' if cached else ''}".replace(" ", "_").replace(",", "")
                height, width = PIXELS[pixels]
                window, sinks = ATTENTION[attention]
                cases[name] = dict(height=height, width=width, window=window, sinks=sinks, steps=steps,
                                   threshold=config.threshold if cached else None)
                oracles[name] = local(video, schedule, config)
    results = torchrun_tokens(3, cases, tmp_path)
    for name, (latents, stats) in results.items():
        oracle = oracles[name]
        assert (latents - oracle.latents).abs().max().item() <= 1e-4, name
        if cases[name]["threshold"] is not None:
            assert_same_bwcache(stats["bwcache"], oracle.bwcache)
        tokens = cases[name]["height"] // 8 * cases[name]["width"] // 8
        frames = BLOCKS * 3
        assert stats["collectives"] == "gloo", name  # Ring's functional all-gathers need a C++ backend
        # Ring: every head, a third of every frame's tokens
        assert stats["cache_shapes"] == [[6, 1, frames * share, 4, 48] for share in frame_shares(tokens, 3)], name
        ticks = BLOCKS * (cases[name]["steps"] + 1) - 1  # the serial schedule: the last block has no recache
        assert [entry[:2] for entry in stats["traffic"]] == [[t, w] for t in range(ticks) for w in range(3)], name
        assert all(seconds >= 0 and sent > 0 for *_, seconds, sent in stats["traffic"]), name


def test_two_ranks_keep_half_the_heads_of_the_kv_cache(model, tmp_path):
    """Ulysses: after the all-to-all each rank holds every token for half the heads, and caches
    those; its exchanges go through shared memory on one host, through gloo when told to."""
    case = dict(height=56, width=56, window=None, sinks=0, steps=STEPS, threshold=None)
    runs = torchrun_tokens(2, {"ulysses": case, "ulysses over gloo": {**case, "kv_exchange": "broadcast"}}, tmp_path)
    oracle = local(variant(model, "49 tokens", "global"), make_schedule(BLOCKS, STEPS)).latents
    for (latents, stats), collectives in zip(runs.values(), ("cascade_shm", "gloo")):
        assert (latents - oracle).abs().max().item() <= 1e-4
        assert stats["cache_shapes"] == [[6, 1, BLOCKS * 3 * 49, 2, 48]] * 2
        assert stats["collectives"] == collectives

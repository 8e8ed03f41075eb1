"""One worker of an initialised process group: the tick loop of a pool worker or a torchrun rank.

Blocks are owned by workers, block ``b`` by worker ``b mod W``, so a block's latent never moves.
Every worker walks the whole schedule; in each tick it runs the items of its own blocks, one at
a time, then the owners send the K/V their items wrote. That serves the context rule of
DESIGN.md §2 (an item at tick τ sees the K/V earlier blocks had at the end of τ−1), so the pool
produces the same video as the local executor. The backend never does math: a worker runs
``DenoiseJob.run`` on its own model replica and only moves tensors.

No tick-wide barrier: the sends are posted without waiting, lowest block first, and a worker
waits only before an item that attends to a block whose K/V are still on their way. Attention is
block-causal, so the owner of the lowest block in flight never waits for anyone and the others
wait for one transfer, not for every worker to arrive and for every owner to send. A worker's
cache then holds the K/V its next item may read: those of lower blocks as of the end of the
previous tick (it expects later sends only after its own items of this tick).

Why K/V and not latents: a block's latent is far smaller than its K/V for all layers, but a
worker that receives a latent must run the same forward again to get the K/V it needs, so every
worker would end up running every item and the tick would take as long as on one device. K/V
move (``kv_exchange.py``) through shared memory when every worker is a CPU process of one
x86-64 host, else with a broadcast from each owner (gloo on CPU, NCCL on GPU), one per owner per
tick. The tokens placement's exchanges take the same way: the ``cascade_shm`` backend
(``shared_memory_group.py``) for the device mesh's Ulysses dimension, else the group's own.

The ``tokens`` placement (sequence parallelism) uses the same loop the other way round: every
worker runs every item, each on its share of the tokens, and the job's model exchanges Q/K/V
inside each forward (``DenoiseJob.token_parallel``: diffusers' context parallelism); nothing moves
between ticks, and only worker 0 hands on blocks, since every worker ends with every latent. So a
tick that is one forward of several blocks (``DenoiseJob.one_forward``: a joint job's tick,
LongLive's switch pass) runs there as that one forward on every worker; the ``blocks`` placement,
whose workers hold only their own blocks, refuses such ticks. Each tick's traffic is the time the
worker's collectives took inside its forwards, as its model timed them.
"""

from __future__ import annotations

import socket
import time
import weakref

import torch
import torch.distributed as dist

from ..schedule import Schedule
from . import shared_memory_group
from .base import BlockFn, CommEntry, ExecutionResult, TimelineEntry, report_progress
from .fingerprint import same_fingerprint, tensor_fingerprint, weight_fingerprint
from .kv_exchange import (BroadcastExchange, SharedMemoryExchange, block_kv_shape, open_shared_memory_exchange,
                          owner, owners_of, shared_memory_possible)

COLLECTIVE_TIMEOUT_S = 300.0  # a worker stuck alive in a collective fails after this
# How long a pool's parent waits for the next tick of a run before it calls a worker hung and
# stops the pool. A tick is one forward per worker: well under a second for the bundled model,
# seconds for Wan2.1 on a GPU; a pool's first run also builds its caches and communicators.
TICK_TIMEOUT_S = 60.0
# auto: shared memory where every worker can map it, for the K/V and the tokens placement's exchanges
KV_EXCHANGES = ("auto", "shared_memory", "broadcast")
# How a run's items spread over the workers: block b on worker b mod W, or every item on every
# worker, each on its share of the tokens (sequence parallelism)
PLACEMENTS = ("blocks", "tokens")


def refuse_one_forward_ticks(job, schedule: Schedule, placement: str) -> None:
    """The blocks placement runs each worker's own blocks item by item: a forward of several
    blocks needs them all on every worker, as the tokens placement has them."""
    if placement != "blocks":
        return
    if job.joint:
        raise ValueError("a joint job runs each tick as one forward of its blocks, which the blocks placement "
                         "spreads over workers: use placement tokens")
    if any(job.one_forward(tick) for tick in schedule.ticks):
        raise ValueError("a serial run with prompt switches re-encodes its recent blocks in one forward (LongLive's "
                         "switch pass), which the blocks placement spreads over workers: use placement tokens")


def check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")


class RankExecutor:
    """This process as one worker of an initialised process group (pool worker or torchrun rank).

    ``execute`` is collective: every rank calls it with the same job (around its own replica)
    and schedule, and every rank returns the whole result. Construct it on every rank at the
    same point too: on NCCL it creates a gloo group for the small Python objects it gathers.
    """

    name = "distributed"

    def __init__(self, device: str | torch.device, kv_exchange: str = "auto",
                 timeout_s: float = COLLECTIVE_TIMEOUT_S, placement: str = "blocks"):
        if kv_exchange not in KV_EXCHANGES:
            raise ValueError(f"kv_exchange must be one of {KV_EXCHANGES}, got {kv_exchange!r}")
        check_placement(placement)
        self.placement = placement  # the runs' placement unless ``execute`` is given another
        self.device = torch.device(device)
        self.rank = dist.get_rank()
        self.workers = dist.get_world_size()
        self.timeout_s = timeout_s
        self._cpu_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        possible = [None] * self.workers
        dist.all_gather_object(possible, (shared_memory_possible(self.device), socket.gethostname()),
                               group=self._cpu_group)
        one_memory = all(can for can, _ in possible) and len({host for _, host in possible}) == 1
        if kv_exchange == "shared_memory" and not one_memory:
            raise ValueError("kv_exchange='shared_memory' needs every worker on the CPU of one x86-64 host")
        self._shared_memory = kv_exchange != "broadcast" and one_memory
        # the tokens placement's collectives take the same way: shared memory, else the group's backend
        self._token_collectives = shared_memory_group.register() if self._shared_memory else None
        self._requested = kv_exchange
        self._shm: SharedMemoryExchange | None = None
        self._caches: dict[str, object] = {}  # per placement: the last run's KV cache, reused when it fits
        self._tokens = None  # the last tokens run's share of the work (its device mesh is kept)

    @property
    def kv_exchange(self) -> str:
        """How this executor's K/V travel: "shared_memory" or "broadcast"."""
        return "shared_memory" if self._shared_memory else "broadcast"

    def execute(self, job, schedule: Schedule, progress=None, on_block: BlockFn | None = None,
                clock_origin: float | None = None, checked: bool = False,
                on_own_block: BlockFn | None = None, placement: str | None = None) -> ExecutionResult:
        """Run this rank's items of ``schedule``; returns every block's latent (CPU) and timing.

        ``placement`` (default: the executor's): "blocks" runs the items of block b on worker
        b mod W and exchanges K/V after each tick; "tokens" runs every item on every worker, each
        on its share of every frame's tokens (the job's ``token_parallel``: the attention
        exchanges Q/K/V within each forward, each worker keeps its share of the KV cache, every
        worker ends with every latent; a tick that is one forward runs as one). Its timeline has
        every worker's forwards, ``model_calls`` counts each forward once and the session report is
        rank 0's (every rank takes the same decisions: checked).

        ``on_block`` is accepted for the executor protocol and not called: a rank sees only its
        own blocks finish, so it cannot hand on every block in order (the pipeline decodes what
        nobody handed on when the run ends). ``on_own_block(block, latent, t)``: called as each
        of this rank's blocks is final (the pool forwards these to its parent, which orders them).
        ``clock_origin``: a ``time.perf_counter()`` reading on this machine that the times are
        measured from (the pool passes the moment its parent started the run: one clock for
        all its workers). By default the run starts when all ranks pass a barrier, which also
        holds across machines. ``checked``: the caller made sure every rank holds the same
        weights and prompt embedding (the pool does); otherwise the ranks compare them first.
        """
        placement = placement or self.placement
        check_placement(placement)
        refuse_one_forward_ticks(job, schedule, placement)
        if not checked:
            self._check_same_job(job)
        tokens = None
        if placement == "tokens":
            tokens = self._tokens = job.token_parallel(self.device, reuse=self._tokens,
                                                       ulysses_backend=self._token_collectives)
        # An earlier run's cache when it fits: a fresh one costs milliseconds of zeroing and page
        # faults, on the run's clock since the pool's clock starts in the parent.
        cache = self._caches[placement] = job.new_cache(self.device, reuse=self._caches.get(placement), tokens=tokens)
        exchange = None if tokens is not None else self._exchange_for(cache, schedule, cache.num_frames // job.num_blocks)
        with job.session(cache, tokens=tokens) as report:
            dist.barrier(group=self._cpu_group)
            origin = time.perf_counter() if clock_origin is None else clock_origin
            mine = self._run_ticks(job, schedule, cache, exchange, lambda: time.perf_counter() - origin,
                                   progress, on_own_block if tokens is None or self.rank == 0 else None, tokens)
        gathered = [None] * self.workers
        # on the tokens placement every rank holds every latent: its own are the run's
        shared = mine if tokens is None else ({}, *mine[1:])
        dist.all_gather_object(gathered, (*shared, report), group=self._cpu_group)
        timeline = sorted((e for part in gathered for e in part[1]), key=lambda e: (e.start, e.worker))
        communication = sorted((c for part in gathered for c in part[2]), key=lambda c: (c.tick, c.worker))
        if tokens is not None:
            return self._tokens_result(schedule, mine[0], timeline, communication, gathered)
        latents = {block: x for part in gathered for block, x in part[0].items()}
        return ExecutionResult(
            latents=[latents[b] for b in range(schedule.num_blocks)],
            timeline=timeline,
            model_calls=sum(part[3] for part in gathered),
            communication=communication,
            session_reports=[part[4] for part in gathered],
        )

    def _tokens_result(self, schedule: Schedule, latents: dict, timeline: list, communication: list,
                       gathered: list) -> ExecutionResult:
        """Every rank ran every item: its own latents are the run's, and its report speaks for all
        once every rank's agrees (BWCache decided alike everywhere, each rank built its
        cross-attention cache alike)."""
        reports = [part[4] for part in gathered]
        differing = [rank for rank, report in enumerate(reports) if report != reports[0]]
        if differing:
            raise RuntimeError(f"workers {differing} ran the tokens placement differently from worker 0: "
                               f"{reports[differing[0]]} against {reports[0]}")
        return ExecutionResult(latents=[latents[b] for b in range(schedule.num_blocks)], timeline=timeline,
                               model_calls=gathered[0][3], communication=communication, session_reports=reports[:1])

    def _run_ticks(self, job, schedule: Schedule, cache, exchange, clock, progress, on_own_block, tokens=None):
        """This rank's items, tick by tick: its own blocks' with an ``exchange`` of K/V, every item
        without one (tokens); returns (its blocks' latents, timeline, traffic, calls). The traffic
        of the tokens placement is the seconds its collectives took inside the tick's forwards
        (``TokenParallel.traffic``) as ``blocked_s``, ``posted`` the tick's end."""
        frames_per_block = cache.num_frames // job.num_blocks
        current: dict[int, torch.Tensor] = {}
        timeline: list[TimelineEntry] = []
        communication: list[CommEntry] = []
        calls = 0
        for tick_index, tick in enumerate(schedule.ticks):
            blocked = 0.0
            for forward in self._forwards(job, tick, exchange):
                for item in forward:
                    if item.block not in current:
                        current[item.block] = job.initial_latent(item.block, self.device)
                waiting = clock()
                if exchange is not None:
                    exchange.receive(cache, frames_per_block, below=forward[0].block)
                self._sync()
                start = clock()
                blocked += start - waiting
                outputs = job.run(forward, [current[item.block] for item in forward], cache)
                self._sync()
                end = clock()
                calls += 1
                for item, output in zip(forward, outputs):
                    current[item.block] = output
                    timeline.append(TimelineEntry(item.block, item.step, self.rank, start, end))
                    if on_own_block is not None and schedule.is_final(item):
                        on_own_block(item.block, output.cpu(), clock())
            cache.commit()
            if exchange is not None:
                posted = clock()
                sent, received = exchange.post(cache, [i.block for i in tick], frames_per_block)
                communication.append(CommEntry(tick_index, self.rank, posted, blocked, sent, received))
            elif tokens is not None:
                spent = tokens.traffic()
                communication.append(CommEntry(tick_index, self.rank, clock(), spent.seconds, spent.sent,
                                               spent.received))
            report_progress(progress, tick_index, schedule)
        if exchange is not None:
            exchange.receive(cache, frames_per_block, below=None)
        return {block: latent.cpu() for block, latent in current.items()}, timeline, communication, calls

    def _forwards(self, job, tick, exchange) -> list[tuple]:
        """This rank's forwards of ``tick``: with an ``exchange`` (blocks), its own blocks' items one
        by one; without one (tokens), every item, and a tick that is one forward as one, since
        every worker holds every latent."""
        if exchange is not None:
            return [(item,) for item in tick if owner(item.block, self.workers) == self.rank]
        return [tuple(tick)] if job.one_forward(tick) else [(item,) for item in tick]

    def _exchange_for(self, cache, schedule: Schedule, frames_per_block: int):
        """Shared memory when every worker can map the others' (kept across runs, remapped when
        a run needs bigger slots), else broadcasts. Collective: every rank decides alike."""
        if not self._shared_memory:
            return BroadcastExchange(self.rank, self.workers)
        per_block = block_kv_shape(cache, frames_per_block)
        max_blocks = max(len(owned) for tick in schedule.ticks
                         for owned in owners_of([i.block for i in tick], self.workers).values())
        if self._shm is None or not self._shm.fits(per_block, cache.k.dtype, max_blocks):
            self._shm = open_shared_memory_exchange(self.rank, self.workers, per_block, cache.k.dtype, max_blocks,
                                                    self.timeout_s, group=self._cpu_group)
            if self._shm is None:
                if self._requested == "shared_memory":
                    raise RuntimeError("kv_exchange='shared_memory': the workers cannot map each other's "
                                       "shared memory (other hosts, or containers with their own /dev/shm)")
                self._shared_memory = False
                return BroadcastExchange(self.rank, self.workers)
        self._shm.start_run()
        return self._shm

    def _check_same_job(self, job) -> None:
        """Every rank must hold the same weights and prompt embedding, or the blocks they compute
        would silently disagree. A replica's fingerprint is computed once, the prompt's per run."""
        if job.transformer not in self._fingerprints:
            self._fingerprints[job.transformer] = weight_fingerprint(job.transformer)
        gathered = [None] * self.workers
        mine = (self._fingerprints[job.transformer], tensor_fingerprint(job.text))
        dist.all_gather_object(gathered, mine, group=self._cpu_group)
        for rank, (weights, text) in enumerate(gathered):
            if not same_fingerprint(weights, gathered[0][0]):
                raise RuntimeError(f"worker {rank}'s model weights differ from worker 0's: every worker "
                                   "must load the same model (same preset or files, same dtype)")
            if not same_fingerprint(text, gathered[0][1]):
                raise RuntimeError(f"worker {rank}'s prompt embedding differs from worker 0's")

    def _sync(self) -> None:
        """Wait for the device, so that times measure the work and not its launch."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


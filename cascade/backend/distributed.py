"""Executors on several devices: a long-lived pool of torch.distributed workers, or torchrun.

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
moves (``kv_exchange.py``) through shared memory when every worker is a CPU process of one
x86-64 host, else with a broadcast from each owner (gloo on CPU, NCCL on GPU), one per owner per
tick.

Two ways to run it:

- ``DistributedExecutor``: the application's pool. W worker processes are started once with
  ``torch.multiprocessing`` and reused by every run; each loads its replica from a picklable
  loader (a preset name) once. Runs are sent over a control queue (a small job description:
  prompt embedding, sampler, layout, seed); the K/V exchange goes through torch.distributed.
  A worker that dies or fails turns into a RuntimeError for the run within about a second, and
  the pool is started afresh for the next run. Workers are forked from a forkserver that has
  imported torch and the model code, so a pool restarts in a second or two instead of importing
  torch afresh in every worker as spawned processes would; the forkserver touches no device
  (CUDA is safe in its children) and lives as long as the application.
- ``RankExecutor`` in a process group that someone else initialised: what each pool worker runs,
  and what ``python -m cascade.backend.distributed`` uses under ``torchrun`` (across machines
  too)::

      torchrun --standalone --nproc_per_node=2 -m cascade.backend.distributed \\
          --model random-tiny --prompt "a red ball" --blocks 4 --steps 4 --window 2 --out out/

  Across machines, run on every node (one rank per GPU; rank 0's node writes the result)::

      torchrun --nnodes=2 --node_rank=N --master_addr=HOST0 --master_port=29500 \\
          --nproc_per_node=GPUS -m cascade.backend.distributed --model NAME --prompt ... --out out/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..schedule import Schedule
from .base import ExecutionResult, TimelineEntry, report_progress
from .kv_exchange import (BroadcastExchange, SharedMemoryExchange, block_kv_shape, open_shared_memory_exchange,
                          owner, owners_of, shared_memory_possible)

POLL_S = 0.1  # how often the parent looks at its workers while it waits
FAILURE_GRACE_S = 1.0  # after a failure, how long to wait for the other workers' own reports
START_TIMEOUT_S = 600.0  # starting the workers, importing torch and loading a replica
COLLECTIVE_TIMEOUT_S = 300.0  # a worker stuck alive in a collective fails after this
KV_EXCHANGES = ("auto", "shared_memory", "broadcast")  # auto: shared memory where every worker can map it


@dataclass(frozen=True)
class CommEntry:
    """One worker's K/V traffic of one tick, on the run's clock (seconds since it started).

    ``posted``: its items of the tick were done and it posted the tick's broadcasts;
    ``blocked_s``: how long its items of this tick waited for K/V still on their way (transfer
    time on the critical path, plus any wait for a slower owner). ``sent_bytes`` is the payload
    this worker broadcast (each other worker receives it).
    """

    tick: int
    worker: int
    posted: float
    blocked_s: float
    sent_bytes: int
    received_bytes: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class DistributedResult(ExecutionResult):
    """An ``ExecutionResult`` plus what the K/V exchange of every tick cost on every worker."""

    communication: list[CommEntry] = field(default_factory=list)


def _sums(t: torch.Tensor) -> tuple[float, float]:
    t = t.detach().double()
    return t.sum().item(), t.square().sum().item()


def weight_fingerprint(module: torch.nn.Module) -> list[tuple[str, float, float]]:
    """Name, sum and sum of squares (float64) of every tensor of a model's state.

    Replicas of the same weights agree to float64 rounding on any device; weights from another
    seed, file or dtype do not. One pass over the weights: computed once per model object.
    """
    return [(name, *_sums(tensor)) for name, tensor in module.state_dict().items()]


def same_fingerprint(a, b) -> bool:
    """Equal names, and sums equal up to float64 rounding of reductions in another order."""
    if len(a) != len(b):
        return False
    for (name_a, *sums_a), (name_b, *sums_b) in zip(a, b):
        if name_a != name_b:
            return False
        for x, y in zip(sums_a, sums_b):
            if abs(x - y) > 1e-6 * max(1.0, abs(x), abs(y)):
                return False
    return True


def tensor_fingerprint(t: torch.Tensor) -> list[tuple[str, float, float]]:
    return [(str(tuple(t.shape)), *_sums(t))]


class RankExecutor:
    """This process as one worker of an initialised process group (pool worker or torchrun rank).

    ``execute`` is collective: every rank calls it with the same job (around its own replica)
    and schedule, and every rank returns the whole result. Construct it on every rank at the
    same point too: on NCCL it creates a gloo group for the small Python objects it gathers.
    """

    name = "distributed"

    def __init__(self, device: str | torch.device, kv_exchange: str = "auto",
                 timeout_s: float = COLLECTIVE_TIMEOUT_S):
        if kv_exchange not in KV_EXCHANGES:
            raise ValueError(f"kv_exchange must be one of {KV_EXCHANGES}, got {kv_exchange!r}")
        self.device = torch.device(device)
        self.rank = dist.get_rank()
        self.workers = dist.get_world_size()
        self.timeout_s = timeout_s
        self._cpu_group = dist.new_group(backend="gloo") if dist.get_backend() == "nccl" else None
        self._fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        possible = [None] * self.workers
        dist.all_gather_object(possible, shared_memory_possible(self.device), group=self._cpu_group)
        if kv_exchange == "shared_memory" and not all(possible):
            raise ValueError("kv_exchange='shared_memory' needs every worker on the CPU of one x86-64 host")
        self._shared_memory = kv_exchange != "broadcast" and all(possible)
        self._requested = kv_exchange
        self._shm: SharedMemoryExchange | None = None
        self._cache = None

    @property
    def kv_exchange(self) -> str:
        """How this executor's K/V travel: "shared_memory" or "broadcast"."""
        return "shared_memory" if self._shared_memory else "broadcast"

    def execute(self, job, schedule: Schedule, progress=None, clock_origin: float | None = None,
                checked: bool = False) -> DistributedResult:
        """Run this rank's items of ``schedule``; returns every block's latent (CPU) and timing.

        ``clock_origin``: a ``time.perf_counter()`` reading on this machine that the times are
        measured from (the pool passes the moment its parent started the run: one clock for
        all its workers). By default the run starts when all ranks pass a barrier, which also
        holds across machines. ``checked``: the caller made sure every rank holds the same
        weights and prompt embedding (the pool does); otherwise the ranks compare them first.
        """
        if job.joint:
            raise ValueError("a joint job runs a whole tick in one forward on one device; "
                             "use LocalExecutor for the joint variant")
        if not checked:
            self._check_same_job(job)
        # An earlier run's cache when it fits: a fresh one costs milliseconds of zeroing and page
        # faults, on the run's clock since the pool's clock starts in the parent.
        cache = self._cache = job.new_cache(self.device, reuse=self._cache)
        frames_per_block = cache.num_frames // job.num_blocks
        exchange = self._exchange_for(cache, schedule, frames_per_block)
        dist.barrier(group=self._cpu_group)
        origin = time.perf_counter() if clock_origin is None else clock_origin

        def clock() -> float:
            return time.perf_counter() - origin

        current: dict[int, torch.Tensor] = {}
        timeline: list[TimelineEntry] = []
        communication: list[CommEntry] = []
        calls = 0
        for tick_index, tick in enumerate(schedule.ticks):
            blocked = 0.0
            for item in tick:
                if owner(item.block, self.workers) != self.rank:
                    continue
                if item.block not in current:
                    current[item.block] = job.initial_latent(item.block, self.device)
                waiting = clock()
                exchange.receive(cache, frames_per_block, below=item.block)
                self._sync()
                start = clock()
                blocked += start - waiting
                (current[item.block],) = job.run((item,), [current[item.block]], cache)
                self._sync()
                timeline.append(TimelineEntry(item.block, item.step, self.rank, start, clock()))
                calls += 1
            cache.commit()
            posted = clock()
            sent, received = exchange.post(cache, [i.block for i in tick], frames_per_block)
            communication.append(CommEntry(tick_index, self.rank, posted, blocked, sent, received))
            report_progress(progress, tick_index, schedule)
        exchange.receive(cache, frames_per_block, below=None)

        mine = {block: latent.cpu() for block, latent in current.items()}
        gathered = [None] * self.workers
        dist.all_gather_object(gathered, (mine, timeline, communication, calls), group=self._cpu_group)
        latents = {block: x for part in gathered for block, x in part[0].items()}
        return DistributedResult(
            latents=[latents[b] for b in range(schedule.num_blocks)],
            timeline=sorted((e for part in gathered for e in part[1]), key=lambda e: (e.start, e.worker)),
            model_calls=sum(part[3] for part in gathered),
            communication=sorted((c for part in gathered for c in part[2]), key=lambda c: (c.tick, c.worker)),
        )

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


@dataclass(frozen=True)
class PresetLoader:
    """How a worker gets its replica: ``load_model(name)`` on its own device (picklable)."""

    name: str
    dtype: str | None = None  # e.g. "bfloat16"; None: the preset's default

    def __call__(self, device: torch.device) -> torch.nn.Module:
        from ..model.presets import load_model

        dtype = getattr(torch, self.dtype) if self.dtype else None
        return load_model(self.name, device=device, dtype=dtype).transformer


@dataclass(frozen=True)
class _WorkerConfig:
    rank: int
    workers: int
    store_port: int
    backend: str
    device: str
    threads: int | None
    loader: Callable[[torch.device], torch.nn.Module]
    collective_timeout_s: float
    kv_exchange: str


def _worker_main(config: _WorkerConfig, commands, results) -> None:
    """A pool worker: join the group, load the replica, then run jobs until told to stop.

    Any failure is reported on ``results`` and ends the process: its peers may be stuck in a
    collective with it, so the parent replaces the whole pool rather than patch it.
    """
    rank = config.rank
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        device = torch.device(config.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=config.collective_timeout_s)
        store = dist.TCPStore("127.0.0.1", config.store_port, config.workers, is_master=False, timeout=timeout)
        dist.init_process_group(config.backend, store=store, rank=rank, world_size=config.workers, timeout=timeout)
        replica = config.loader(device)
        executor = RankExecutor(device, config.kv_exchange, config.collective_timeout_s)
        results.put(("ready", rank, weight_fingerprint(replica), executor.kv_exchange))
        parent = multiprocessing.parent_process()
        while True:
            try:
                command = commands.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    break  # orphaned: nobody will ever send another run
                continue
            if command is None:
                break
            run_id, spec, schedule, origin = pickle.loads(command)
            job = dataclasses.replace(spec, transformer=replica)
            progress = _forward_progress(results, run_id) if rank == 0 else None
            # checked: the parent compared the job's weights with the replicas (identical since the
            # start) and sent every worker the same prompt embedding
            result = executor.execute(job, schedule, progress=progress, clock_origin=origin, checked=True)
            if rank == 0:
                results.put(("done", run_id, result))
        dist.destroy_process_group()
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
        detail = "".join(traceback.format_exception(error)).rstrip()
        results.put(("error", rank, f"{type(error).__name__}: {error}", detail))
        _exit_now(1, results)
    _exit_now(0, results)


def _forward_progress(results, run_id: int):
    """Rank 0 tells the parent when a tick is done on every worker."""
    return lambda fraction, message: results.put(("progress", run_id, fraction, message))


def _exit_now(code: int, results) -> None:
    """Leave without the interpreter's teardown, which takes seconds once torch is loaded in a
    started process and has nothing left to clean up once our messages are flushed."""
    results.close()
    results.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@dataclass
class _Pool:
    """One generation of workers; replaced as a whole after any failure."""

    processes: list
    commands: list
    results: object
    store: dist.TCPStore
    fingerprint: list


class DistributedExecutor:
    """A pool of ``workers`` processes, one per device, shared by every run until ``close()``.

    ``model``: a preset name for ``cascade.model.presets.load_model`` (or a ``PresetLoader``, or
    any picklable callable ``loader(device) -> transformer``); each worker loads its replica once.
    A run's model must have the same weights (checked per run). ``device``: ``"cpu"`` (gloo,
    cores split: ``threads_per_worker`` each, default all cores / workers) or ``"cuda"``
    (NCCL, worker i on ``cuda:i``). Runs are served one at a time, in the order they arrive.
    ``kv_exchange``: "auto" (shared memory for a CPU pool on x86-64, else broadcasts),
    "shared_memory" or "broadcast"; ``self.kv_exchange`` says which the workers use.
    """

    name = "distributed"

    def __init__(
        self,
        model: str | Callable[[torch.device], torch.nn.Module],
        workers: int = 2,
        device: str = "cpu",
        threads_per_worker: int | None = None,
        collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
        kv_exchange: str = "auto",
    ):
        if kv_exchange not in KV_EXCHANGES:
            raise ValueError(f"kv_exchange must be one of {KV_EXCHANGES}, got {kv_exchange!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and workers > torch.cuda.device_count():
            raise ValueError(f"{workers} workers need {workers} GPUs, {torch.cuda.device_count()} visible")
        self.workers = workers
        self.device = device
        self.loader = PresetLoader(model) if isinstance(model, str) else model
        if device == "cpu":
            self.threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        else:
            self.threads = threads_per_worker
        self.collective_timeout_s = collective_timeout_s
        self.start_timeout_s = start_timeout_s
        self.requested_kv_exchange = kv_exchange
        self.kv_exchange: str | None = None  # what the workers chose, once started
        self._pool: _Pool | None = None
        self._closed = False
        self._run_id = 0
        self._job_fingerprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.RLock()  # one run, start or close at a time
        self.start()

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers (if not running) and wait until each has loaded an identical replica."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this DistributedExecutor is closed")
            if self._pool is None:
                self._start()

    def _start(self) -> None:
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["cascade.backend.distributed", "cascade.model.presets"])
        store = dist.TCPStore("127.0.0.1", 0, self.workers, is_master=True, wait_for_workers=False,
                              timeout=timedelta(seconds=self.collective_timeout_s))
        results = context.Queue()
        commands = [context.Queue() for _ in range(self.workers)]
        backend = "nccl" if self.device == "cuda" else "gloo"
        processes = []
        for rank in range(self.workers):
            config = _WorkerConfig(rank, self.workers, store.port, backend, self._worker_device(rank),
                                   self.threads, self.loader, self.collective_timeout_s, self.requested_kv_exchange)
            process = context.Process(target=_worker_main, args=(config, commands[rank], results),
                                      name=f"cascade-worker-{rank}", daemon=True)
            process.start()
            processes.append(process)
        self._pool = _Pool(processes, commands, results, store, fingerprint=[])
        fingerprints = {}
        deadline = time.monotonic() + self.start_timeout_s
        while len(fingerprints) < self.workers:
            message = self._next_message(deadline, "start")
            if message[0] == "ready":
                _, rank, fingerprints[rank], self.kv_exchange = message
        for rank, fingerprint in fingerprints.items():
            if not same_fingerprint(fingerprint, fingerprints[0]):
                self._stop()
                raise RuntimeError(f"distributed worker {rank} loaded different weights than worker 0 "
                                   f"from {self.loader!r}: a loader must be deterministic")
        self._pool.fingerprint = fingerprints[0]

    def close(self) -> None:
        """Stop the workers (politely, then by force) and wait until they are gone; final."""
        with self._lock:
            self._closed = True
            self._stop(polite=True)

    def __enter__(self) -> "DistributedExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._pool.processes] if self._pool else []

    def _describe_worker(self, pool: _Pool, rank: int) -> str:
        return f"worker {rank} (pid {pool.processes[rank].pid}, {self._worker_device(rank)})"

    def _worker_device(self, rank: int) -> str:
        return f"cuda:{rank}" if self.device == "cuda" else "cpu"

    def _stop(self, polite: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if polite:
            for command_queue, process in zip(pool.commands, pool.processes):
                if process.is_alive():
                    command_queue.put(None)
            for process in pool.processes:
                process.join(timeout=10)
        for process in pool.processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
        for q in [*pool.commands, pool.results]:
            q.cancel_join_thread()
            q.close()

    # --- runs ------------------------------------------------------------------------------

    def execute(self, job, schedule: Schedule, progress=None) -> DistributedResult:
        """Run ``job`` on the pool (started afresh if an earlier run failed).

        Raises ValueError for a joint job or a model whose weights differ from the replicas,
        RuntimeError naming the worker and the cause if a worker dies or fails.
        """
        if job.joint:
            raise ValueError("a joint job runs a whole tick in one forward on one device; "
                             "use LocalExecutor for the joint variant")
        with self._lock:
            return self._execute(job, schedule, progress)

    def _execute(self, job, schedule: Schedule, progress) -> DistributedResult:
        self.start()
        self._check_weights(job.transformer)
        self._run_id += 1
        spec = dataclasses.replace(job, transformer=None, text=job.text.detach().cpu(), _text_on={})
        origin = time.perf_counter()
        # Plain pickle, once: torch's queue pickler would move the prompt tensor through a new
        # shared-memory segment for every worker, milliseconds on the clock of every run.
        command = pickle.dumps((self._run_id, spec, schedule, origin))
        for command_queue in self._pool.commands:
            command_queue.put(command)
        while True:
            message = self._next_message(None, f"run {self._run_id}")
            kind, run_id = message[0], message[1]
            if kind == "progress" and run_id == self._run_id and progress is not None:
                progress(message[2], message[3])
            elif kind == "done" and run_id == self._run_id:
                return message[2]

    def _check_weights(self, transformer: torch.nn.Module) -> None:
        if transformer not in self._job_fingerprints:
            self._job_fingerprints[transformer] = weight_fingerprint(transformer)
        if not same_fingerprint(self._job_fingerprints[transformer], self._pool.fingerprint):
            raise ValueError(f"the job's model weights differ from the pool's replicas (loaded by "
                             f"{self.loader!r}): build the pool with the same model and dtype")

    def _next_message(self, deadline: float | None, during: str):
        """The next message from the workers; a dead worker, a reported error or the deadline
        tears the pool down and raises RuntimeError."""
        pool = self._pool
        while True:
            try:
                message = pool.results.get(timeout=POLL_S)
            except queue.Empty:
                message = None
            if message is not None and message[0] == "error":
                raise self._failure(during, [message])
            if any(not p.is_alive() for p in pool.processes):
                raise self._failure(during, [])
            if message is not None:
                return message
            if deadline is not None and time.monotonic() > deadline:
                raise self._failure(during, [], timed_out=True)

    def _failure(self, during: str, errors: list, timed_out: bool = False) -> RuntimeError:
        """Collect what went wrong on every worker, stop the pool, and describe it: dead workers
        first (the cause), then the errors the others reported (often the consequence)."""
        pool = self._pool
        deadline = time.monotonic() + FAILURE_GRACE_S
        while time.monotonic() < deadline:
            try:
                message = pool.results.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if message[0] == "error":
                errors.append(message)
        reported = {rank for _, rank, _, _ in errors}
        lines = []
        for rank, process in enumerate(pool.processes):
            if not process.is_alive() and rank not in reported:
                lines.append(f"{self._describe_worker(pool, rank)} died: {_describe_exit(process.exitcode)}")
        for _, rank, summary, _ in errors:
            lines.append(f"{self._describe_worker(pool, rank)} failed: {summary}")
        if timed_out:
            lines.append(f"no answer within {self.start_timeout_s:.0f} s")
        self._stop()
        message = f"distributed pool failed during {during}: " + "; ".join(lines or ["a worker stopped"])
        if errors:
            message += "\n\nfirst worker traceback:\n" + errors[0][3]
        return RuntimeError(message)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


# --- torchrun ------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="torchrun --nproc_per_node=W -m cascade.backend.distributed",
        description="Generate one video with every torchrun rank as one worker of the distributed executor.",
    )
    parser.add_argument("--model", default=None, help="model name (default: the bundled tiny-shapes)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the model's)")
    parser.add_argument("--window", type=int, default=1, help="blocks in flight at once (1: serial)")
    parser.add_argument("--stride", type=int, default=None, help="items a block runs before the next starts")
    parser.add_argument("--no-recache", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per rank (CPU)")
    parser.add_argument("--kv-exchange", choices=KV_EXCHANGES, default="auto",
                        help="how K/V move between ranks (auto: shared memory when all ranks share one x86-64 host's CPU)")
    parser.add_argument("--out", type=Path, required=True, help="rank 0 writes frames.npy, latents.npy, "
                                                                  "video.mp4 and stats.json here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """One rank of a torchrun job: every rank runs the pipeline, rank 0 writes the result."""
    import numpy as np

    from .. import metrics
    from ..model.presets import load_model
    from ..pipeline import BlockCausalPipeline
    from ..schedule import make_schedule
    from ..video import write_mp4

    args = _parse(argv)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.device == "cuda":
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        local_workers = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local_workers))
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo",
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    try:
        model = load_model(args.model, device=device)
        steps = args.steps or model.sampler.num_steps
        schedule = make_schedule(args.blocks, steps, window=args.window, stride=args.stride,
                                 recache=not args.no_recache)
        executor = RankExecutor(device, args.kv_exchange)
        output = BlockCausalPipeline(model)(args.prompt, schedule, executor, seed=args.seed)
        if dist.get_rank() == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            np.save(args.out / "frames.npy", output.frames)
            np.save(args.out / "latents.npy", output.latents.float().numpy())
            write_mp4(output.frames, args.out / "video.mp4", fps=model.fps)
            timing = metrics.run_timing(output.timeline, output.frames.shape[0] // args.blocks, args.blocks)
            stats = {
                "model": model.name, "prompt": args.prompt, "seed": args.seed, "executor": "torchrun",
                "workers": executor.workers, "device": args.device, "kv_exchange": executor.kv_exchange,
                "blocks": args.blocks, "steps": steps,
                "window": schedule.window, "stride": schedule.stride, "recache": schedule.recache,
                "ticks": schedule.num_ticks, "model_calls": output.model_calls, **timing,
                "timeline": [entry.as_dict() for entry in output.timeline],
            }
            (args.out / "stats.json").write_text(json.dumps(metrics.json_safe(stats), indent=1) + "\n")
            print(f"{executor.workers} ranks: {output.frames.shape[0]} frames in {timing['latency_s']:.2f} s, "
                  f"{schedule.num_ticks} ticks, {output.model_calls} forwards -> {args.out}")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

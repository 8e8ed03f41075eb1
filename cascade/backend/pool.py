"""The application's worker pool: W processes, one per device, started once and shared by every run.

Each worker loads its replica once from a picklable loader handed in by the caller (the backend
names no model), joins a torch.distributed group and runs ``RankExecutor`` (``rank.py``) on
every job it is sent. Runs are sent over a control queue (a small job description: prompt
embedding, sampler, layout, seed, cache settings); the K/V exchange goes through
torch.distributed or shared memory. A worker that dies or fails turns into a RuntimeError for
the run within about a second, and the pool is started afresh for the next run; so does a run
whose workers report no tick for ``tick_timeout_s`` (a worker hung), a run broken off by the
caller (Ctrl-C, an exception in its own callback) and a run in progress when the pool is
closed. A worker that died between runs is replaced before the next one. Workers are
forked from a forkserver that has imported torch, this module and the loader's module, so a pool
restarts in a second or two instead of importing torch afresh in every worker as spawned
processes would; the forkserver touches no device (CUDA is safe in its children) and lives as
long as the application. A worker ends the moment its parent does, a parent killed by SIGKILL
included, and with the workers gone the forkserver and the resource tracker end too. Blocks reach the parent as they finish, so a caller can show them while
the run goes on.
"""

from __future__ import annotations

import dataclasses
import gc
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..schedule import Schedule
from .base import BlockFn, BlockHandOff, ExecutionResult
from .fingerprint import same_fingerprint, weight_fingerprint
from .fork_server import start_fork_server
from .local import torch_threads
from .rank import (COLLECTIVE_TIMEOUT_S, KV_EXCHANGES, TICK_TIMEOUT_S, RankExecutor, check_placement,
                   refuse_one_forward_ticks)

POLL_S = 0.1  # how often the parent looks at its workers while it waits
FAILURE_GRACE_S = 1.0  # after a failure, how long to wait for the other workers' own reports
START_TIMEOUT_S = 600.0  # starting the workers, importing torch and loading a replica


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, which containers often narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_threads(device: str, workers: int, threads_per_worker: int | None) -> int | None:
    """Each worker's intra-op threads: as given, else on the CPU its share of the cores (None on a
    GPU: torch's own)."""
    if device == "cpu":
        return threads_per_worker or max(1, usable_cores() // workers)
    return threads_per_worker


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
    _exit_with_parent()
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
        while True:
            command = commands.get()
            if command is None:
                break
            run_id, spec, schedule, origin, placement = pickle.loads(command)
            job = dataclasses.replace(spec, transformer=replica)
            progress = _forward_progress(results, run_id) if rank == 0 else None
            # checked: the parent compared the job's weights with the replicas (identical since the
            # start) and sent every worker the same prompt embedding
            result = executor.execute(job, schedule, progress=progress, clock_origin=origin, checked=True,
                                      on_own_block=_forward_block(results, run_id), placement=placement)
            if rank == 0:
                results.put(("done", run_id, result))
        dist.destroy_process_group()
    except BaseException as error:  # noqa: BLE001 - reported to the parent, which raises it
        detail = "".join(traceback.format_exception(error)).rstrip()
        results.put(("error", rank, f"{type(error).__name__}: {error}", detail))
        _exit_now(1, results)
    _exit_now(0, results)


def _exit_with_parent() -> None:
    """End this worker the moment its parent dies (SIGKILL included), whatever it is doing: in a
    collective with its peers, or blocked on a results pipe nobody reads any more (the workers
    hold its read end too, so the write never fails). The forkserver and the resource tracker
    then end by themselves: each lives until every holder of its pipe has gone, the workers
    among them."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_when_closed, args=(parent.sentinel,), name="cascade-parent-watch",
                         daemon=True).start()


def _exit_when_closed(sentinel: int) -> None:
    """Exit once ``sentinel`` reads end of file: the parent's end of this process's start pipe has
    closed, so the parent died (or let go of this process)."""
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _forward_progress(results, run_id: int):
    """Rank 0 tells the parent when a tick is done on every worker."""
    return lambda fraction, message: results.put(("progress", run_id, fraction, message))


def _forward_block(results, run_id: int):
    """A worker tells the parent as soon as one of its blocks is final (plain pickle: a torch queue
    would make a shared-memory segment per tensor)."""
    return lambda block, latent, _t: results.put(("block", run_id, block, pickle.dumps(latent)))


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
    """One generation of workers; replaced as a whole after any failure.

    Only ``DistributedExecutor._pool`` refers to one: no method keeps it (or its queues) in a
    local, since a failure's traceback keeps the frames it passed through for as long as someone
    holds the error, and a pool kept alive would keep its store's port open and its queues'
    semaphores in /dev/shm.
    """

    processes: list
    commands: list
    results: object
    store: dist.TCPStore
    fingerprint: list


class DistributedExecutor:
    """A pool of ``workers`` processes, one per device, shared by every run until ``close()``.

    ``loader``: a picklable callable ``loader(device) -> transformer`` (``PresetLoader`` in
    ``cascade.model.presets`` loads a named model); each worker loads its replica once.
    A run's model must have the same weights (checked per run). ``device``: ``"cpu"`` (gloo,
    cores split: ``threads_per_worker`` each, default all cores / workers) or ``"cuda"``
    (NCCL, worker i on ``cuda:i``). Runs are served one at a time, in the order they arrive.
    ``kv_exchange``: "auto" (shared memory for a CPU pool on x86-64, else broadcasts),
    "shared_memory" or "broadcast"; ``self.kv_exchange`` says which the workers use.
    ``tick_timeout_s``: a run whose workers report no tick for this long fails (a worker hung).
    """

    name = "distributed"
    placement = "blocks"

    def __init__(
        self,
        loader: Callable[[torch.device], torch.nn.Module],
        workers: int = 2,
        device: str = "cpu",
        threads_per_worker: int | None = None,
        collective_timeout_s: float = COLLECTIVE_TIMEOUT_S,
        start_timeout_s: float = START_TIMEOUT_S,
        kv_exchange: str = "auto",
        tick_timeout_s: float = TICK_TIMEOUT_S,
    ):
        if kv_exchange not in KV_EXCHANGES:
            raise ValueError(f"kv_exchange must be one of {KV_EXCHANGES}, got {kv_exchange!r}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device == "cpu" and workers > usable_cores():
            raise ValueError(f"{workers} CPU workers need {workers} cores; this machine has {usable_cores()}")
        if device == "cuda" and workers > torch.cuda.device_count():
            raise ValueError(f"{workers} workers need {workers} GPUs, {torch.cuda.device_count()} visible")
        self.workers = workers
        self.device = device
        self.loader = loader
        self.threads = worker_threads(device, workers, threads_per_worker)
        self.collective_timeout_s = collective_timeout_s
        self.start_timeout_s = start_timeout_s
        self.tick_timeout_s = tick_timeout_s
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
        """Start the workers (if not running, or afresh if one died since the last run) and wait
        until each has loaded an identical replica."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this DistributedExecutor is closed")
            if self._pool is not None and not all(p.is_alive() for p in self._pool.processes):
                self._stop()  # a run needs the whole group: its survivors cannot take a new peer in
            if self._pool is None:
                with self._stopped_on_exception():
                    self._start()

    @contextmanager
    def _stopped_on_exception(self):
        """Whatever breaks off a start or a run (a failure, Ctrl-C, an exception in the caller's
        own callback, ``close``) leaves the workers part-way through it: stop them, so that no
        process outlives it and the next run starts afresh instead of meeting them mid-schedule."""
        try:
            yield
        except BaseException:
            self._stop()
            raise

    def _start(self) -> None:
        context = mp.get_context("forkserver")
        start_fork_server((__name__, type(self.loader).__module__))
        backend = "nccl" if self.device == "cuda" else "gloo"
        # The pool exists before its first process does, so that a start broken off part-way stops
        # the processes it started.
        self._pool = _Pool([], [context.Queue() for _ in range(self.workers)], context.Queue(), fingerprint=[],
                           store=dist.TCPStore("127.0.0.1", 0, self.workers, is_master=True, wait_for_workers=False,
                                               timeout=timedelta(seconds=self.collective_timeout_s)))
        for rank in range(self.workers):
            config = _WorkerConfig(rank, self.workers, self._pool.store.port, backend, self._worker_device(rank),
                                   self.threads, self.loader, self.collective_timeout_s, self.requested_kv_exchange)
            process = context.Process(target=_worker_main, args=(config, self._pool.commands[rank], self._pool.results),
                                      name=f"cascade-worker-{rank}", daemon=True)
            process.start()  # which drops its arguments: the process object holds no queue
            self._pool.processes.append(process)
        fingerprints = {}
        deadline = time.monotonic() + self.start_timeout_s
        while len(fingerprints) < self.workers:
            message = self._next_message(deadline, "start", f"no answer within {self.start_timeout_s:.0f} s")
            if message[0] == "ready":
                _, rank, fingerprints[rank], self.kv_exchange = message
        for rank, fingerprint in fingerprints.items():
            if not same_fingerprint(fingerprint, fingerprints[0]):
                raise RuntimeError(f"distributed worker {rank} loaded different weights than worker 0 "
                                   f"from {self.loader!r}: a loader must be deterministic")
        self._pool.fingerprint = fingerprints[0]

    def close(self) -> None:
        """Stop the workers (politely, then by force) and wait until they are gone; final. A run
        in progress in another thread fails at once (its workers are stopped under it) rather
        than hold up an application that is shutting down."""
        self._closed = True  # seen by a run in progress within POLL_S, before the lock is free
        with self._lock:
            self._stop(polite=True)

    def __enter__(self) -> "DistributedExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._pool.processes] if self._pool else []

    def _describe_worker(self, rank: int) -> str:
        return f"worker {rank} (pid {self._pool.processes[rank].pid}, {self._worker_device(rank)})"

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
        # The queues' named semaphores (/dev/shm/sem.mp-*) are unlinked by their finalizers, which a
        # reference cycle through the process objects would put off until some later collection.
        del pool
        gc.collect()

    # --- runs ------------------------------------------------------------------------------

    def execute(self, job, schedule: Schedule, progress=None, on_block: BlockFn | None = None,
                placement: str = "blocks") -> ExecutionResult:
        """Run ``job`` on the pool (started afresh if an earlier run failed); ``on_block`` gets
        every block, in block order, as soon as its owner reports it final. ``placement``: how
        the items spread over the workers (``RankExecutor.execute``; ``placed`` makes an executor
        of the pool with another placement).

        Raises ValueError for a joint job or a switch pass on the blocks placement (forwards of
        several blocks, which the tokens placement runs), or a model whose weights differ from the
        replicas, RuntimeError naming the worker and the cause if a worker dies or fails, or if no
        tick finishes within ``tick_timeout_s``; the pool is then stopped, and started afresh next run.
        """
        check_placement(placement)
        refuse_one_forward_ticks(job, schedule, placement)
        with self._lock:
            return self._execute(job, schedule, progress, on_block, placement)

    def placed(self, placement: str) -> "DistributedExecutor | PlacedPool":
        """This pool as an executor whose runs use ``placement`` (the pool itself for "blocks")."""
        check_placement(placement)
        return self if placement == self.placement else PlacedPool(self, placement)

    def _execute(self, job, schedule: Schedule, progress, on_block, placement: str) -> ExecutionResult:
        self.start()
        self._check_weights(job.transformer)  # a refused job leaves the pool as it was
        with self._stopped_on_exception():
            return self._run(job, schedule, progress, on_block, placement)

    def _run(self, job, schedule: Schedule, progress, on_block, placement: str) -> ExecutionResult:
        self._run_id += 1
        spec = dataclasses.replace(job, transformer=None, text=job.text.detach().cpu(), _text_on={})
        origin = time.perf_counter()
        # Plain pickle, once: torch's queue pickler would move the prompt tensor through a new
        # shared-memory segment for every worker, milliseconds on the clock of every run.
        self._send(pickle.dumps((self._run_id, spec, schedule, origin, placement)))
        blocks = BlockHandOff(on_block, lambda: time.perf_counter() - origin)
        # What this process does meanwhile (decoding the blocks handed on) runs on one thread: torch's
        # idle intra-op threads would spin on the cores the workers run on.
        with torch_threads(1):
            return self._serve_run(blocks, progress)

    def _serve_run(self, blocks: BlockHandOff, progress) -> ExecutionResult:
        """Pass on the current run's progress and blocks until its result arrives, or until no
        tick has finished for ``tick_timeout_s``."""
        silence = f"no tick finished within {self.tick_timeout_s:g} s (tick_timeout_s): a worker hung"
        deadline = time.monotonic() + self.tick_timeout_s
        while True:
            message = self._next_message(deadline, f"run {self._run_id}", silence)
            kind, run_id = message[0], message[1]
            if run_id != self._run_id:
                continue
            # rank 0 reports every tick and owners every finished block: either shows the run moving
            deadline = time.monotonic() + self.tick_timeout_s
            if kind == "progress" and progress is not None:
                progress(message[2], message[3])
            elif kind == "block":
                blocks.finished(message[2], pickle.loads(message[3]))
            elif kind == "done":
                result = message[2]
                # a block message may still be in another worker's queue feeder: take it from the result
                blocks.flush(result.latents)
                return result

    def _send(self, command: bytes) -> None:
        # a method of its own: the loop variable would keep a queue alive in _run's frame (see _Pool)
        for command_queue in self._pool.commands:
            command_queue.put(command)

    def _check_weights(self, transformer: torch.nn.Module) -> None:
        if transformer not in self._job_fingerprints:
            self._job_fingerprints[transformer] = weight_fingerprint(transformer)
        if not same_fingerprint(self._job_fingerprints[transformer], self._pool.fingerprint):
            raise ValueError(f"the job's model weights differ from the pool's replicas (loaded by "
                             f"{self.loader!r}): build the pool with the same model and dtype")

    def _next_message(self, deadline: float, during: str, silence: str):
        """The next message from the workers; a dead worker, a reported error or the deadline
        (``silence`` says what passing it means) tears the pool down and raises RuntimeError, and
        so does ``close`` from another thread."""
        while True:
            if self._closed:
                raise RuntimeError(f"the distributed pool was closed during {during}")
            try:
                message = self._pool.results.get(timeout=POLL_S)
            except queue.Empty:
                message = None
            if message is not None and message[0] == "error":
                raise self._failure(during, [message])
            if any(not p.is_alive() for p in self._pool.processes):
                raise self._failure(during, [])
            if message is not None:
                return message
            if time.monotonic() > deadline:
                raise self._failure(during, [], silence=silence)

    def _failure(self, during: str, errors: list, silence: str | None = None) -> RuntimeError:
        """Collect what went wrong on every worker, stop the pool, and describe it: dead workers
        first (the cause), then the errors the others reported (often the consequence), then
        ``silence`` (a deadline passed). The first line says it all; a worker's traceback
        follows it for whoever wants the detail."""
        deadline = time.monotonic() + FAILURE_GRACE_S
        while time.monotonic() < deadline:
            try:
                message = self._pool.results.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if message[0] == "error":
                errors.append(message)
        reported = {rank for _, rank, _, _ in errors}
        lines = [f"{self._describe_worker(rank)} died: {_describe_exit(process.exitcode)}"
                 for rank, process in enumerate(self._pool.processes)
                 if not process.is_alive() and rank not in reported]
        lines += [f"{self._describe_worker(rank)} failed: {summary}" for _, rank, summary, _ in errors]
        if silence is not None:
            lines.append(silence)
        self._stop()
        message = f"distributed pool failed during {during}: " + "; ".join(lines or ["a worker stopped"])
        if errors:
            message += "\n\nfirst worker traceback:\n" + errors[0][3]
        return RuntimeError(message)


class PlacedPool:
    """A pool seen as an executor whose runs use another placement (``DistributedExecutor.placed``):
    the same workers, queue and failures; only how a run's items spread over them differs."""

    name = DistributedExecutor.name

    def __init__(self, pool: DistributedExecutor, placement: str):
        self.pool, self.placement = pool, placement

    @property
    def workers(self) -> int:
        return self.pool.workers

    @property
    def threads(self) -> int | None:
        return self.pool.threads

    # tokens: nothing moves between ticks (Q/K/V go through the process group within each forward)
    kv_exchange = None

    def execute(self, job, schedule: Schedule, progress=None, on_block: BlockFn | None = None) -> ExecutionResult:
        return self.pool.execute(job, schedule, progress, on_block, placement=self.placement)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


# --- torchrun ------------------------------------------------------------------------------


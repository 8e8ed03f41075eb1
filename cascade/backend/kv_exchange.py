"""How the K/V a worker's items wrote in one tick reach the other workers.

Both exchanges keep the same contract with ``RankExecutor``: after its items of a tick, every
worker calls ``post`` with the tick's blocks (it publishes those it owns and expects the others),
and before an item it calls ``receive(below=block)``, which writes into its cache at least every
expected K/V of a block lower than ``block``, each owner's in posting order. Everything expected
is of a tick before the item's, so the item sees what the context rule says. What it receives is
a copy of exact bytes, so the exchange never changes a result.

- ``BroadcastExchange``: one torch.distributed broadcast per owner per tick, posted async (gloo
  on CPU, NCCL on GPU). Works across machines.
- ``SharedMemoryExchange``: workers on one host (CPU) write into a ring of slots in shared memory
  and bump a counter; readers copy straight from the slot. A gloo broadcast of 1.8 MB goes
  through the kernel twice and gloo's own threads, which on a one-core-per-worker pool take the
  core the forward runs on; a shared slot costs one copy on each side. Counters are plain int64
  stores read by polling, which is correct where stores become visible in program order (x86-64,
  total store order), so the exchange is used only there.
"""

from __future__ import annotations

import platform
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

SHARED_MEMORY_DIR = Path("/dev/shm")
RING_SLOTS = 8  # postings an owner may be ahead of its slowest reader before it waits
POLL_SLEEP_S = 20e-6
TSO_MACHINES = ("x86_64", "amd64", "i386", "i686")


def _copy_owned(cache, blocks: list[int], frames_per_block: int, out: torch.Tensor) -> None:
    """Write the K/V of ``blocks`` into ``out``: [blocks, 2 (K, V), layers, batch, tokens, heads, dim]."""
    for row, b in enumerate(blocks):
        k, v = cache.read_frames(b * frames_per_block, frames_per_block)
        out[row, 0].copy_(k)
        out[row, 1].copy_(v)


def _write_received(cache, blocks: list[int], payload: torch.Tensor, frames_per_block: int) -> None:
    for b, kv in zip(blocks, payload):
        cache.write_frames(b * frames_per_block, kv[0], kv[1])


def block_kv_shape(cache, frames_per_block: int) -> tuple[int, ...]:
    """[2 (K, V), layers, batch, tokens, heads, dim] of one block."""
    k, _ = cache.read_frames(0, frames_per_block)
    return (2, *k.shape)


def owner(block: int, workers: int) -> int:
    """The worker that runs every item of ``block`` and holds its latent."""
    return block % workers


def owners_of(blocks: list[int], workers: int) -> dict[int, list[int]]:
    """Owner -> its blocks among ``blocks``, owners in order of their lowest block."""
    owned_by: dict[int, list[int]] = {}
    for b in sorted(blocks):
        owned_by.setdefault(owner(b, workers), []).append(b)
    return owned_by


@dataclass
class _Posted:
    """One owner's K/V of one tick that this worker has not written into its cache yet."""

    src: int
    blocks: list[int]
    handle: object  # the broadcast's work and buffer, or the owner's posting number

    def needed_below(self, rank: int, below: int | None) -> bool:
        """Must be in the cache before an item of block ``below`` (any item: None) runs on ``rank``."""
        return below is None or (self.src != rank and min(self.blocks) < below)


class _Exchange:
    """The bookkeeping both exchanges share: what each tick's owners post, and its byte counts."""

    def __init__(self, rank: int, workers: int):
        self.rank = rank
        self.workers = workers
        self.pending: list[_Posted] = []

    def post(self, cache, blocks: list[int], frames_per_block: int) -> tuple[int, int]:
        """Publish this worker's K/V of ``blocks``, expect the others'; returns (sent, received) bytes."""
        sent = received = 0
        per_block = block_kv_shape(cache, frames_per_block)
        block_bytes = torch.Size(per_block).numel() * cache.k.element_size()
        for src, owned in owners_of(blocks, self.workers).items():
            if src == self.rank:
                sent += len(owned) * block_bytes
            else:
                received += len(owned) * block_bytes
            handle = self._post_one(cache, src, owned, frames_per_block, per_block)
            if handle is not None:
                self.pending.append(_Posted(src, owned, handle))
        return sent, received

    def _post_one(self, cache, src, owned, frames_per_block, per_block):
        raise NotImplementedError


class BroadcastExchange(_Exchange):
    """One async torch.distributed broadcast per owner per tick, lowest block first; received in
    posting order, as collectives must be finished."""

    name = "broadcast"

    def _post_one(self, cache, src, owned, frames_per_block, per_block):
        payload = torch.empty((len(owned), *per_block), dtype=cache.k.dtype, device=cache.device)
        if src == self.rank:
            _copy_owned(cache, owned, frames_per_block, out=payload)
        return dist.broadcast(payload, src=src, async_op=True), payload

    def receive(self, cache, frames_per_block: int, below: int | None) -> None:
        """Write what others posted into the cache, in posting order, until nothing left carries a
        block lower than ``below`` (everything for ``None``)."""
        while any(entry.needed_below(self.rank, below) for entry in self.pending):
            entry = self.pending.pop(0)
            work, payload = entry.handle
            work.wait()
            if entry.src != self.rank:
                _write_received(cache, entry.blocks, payload, frames_per_block)


class SharedMemoryExchange(_Exchange):
    """Same-host K/V exchange through a ring of shared-memory slots per owner.

    ``outboxes[r]``: [slots, max blocks, *block K/V shape] written only by worker r. ``counters``:
    one row per worker, written only by that worker: column 0 counts its postings, column 1 + s
    counts the postings of worker s it has copied out. An owner reuses a slot only once every
    reader has copied it out; a reader copies a slot only once its owner counted it.

    Whenever a worker waits (for K/V, or for a free slot) it copies out everything already
    published, each owner's postings in order. So a reader that does not need an owner's blocks
    yet never holds that owner up, and no two workers can wait for each other. Copying early is
    safe: every expected posting is of a tick before the reader's next item.
    """

    name = "shared_memory"

    def __init__(self, rank, workers, outboxes, counters, timeout_s: float):
        super().__init__(rank, workers)
        self.outboxes = outboxes
        self.counters = counters.numpy()
        self.timeout_s = timeout_s
        self.posted = [0] * workers  # postings of each owner so far this run

    def start_run(self) -> None:
        """Reset this worker's counters; call on every worker before the run's start barrier."""
        self.counters[self.rank, :] = 0
        self.posted = [0] * self.workers
        self.pending.clear()

    def fits(self, per_block: tuple[int, ...], dtype: torch.dtype, max_blocks: int) -> bool:
        box = self.outboxes[self.rank]
        return tuple(box.shape[2:]) == tuple(per_block) and box.dtype == dtype and box.shape[1] >= max_blocks

    def _post_one(self, cache, src, owned, frames_per_block, per_block):
        number = self.posted[src]
        self.posted[src] += 1
        if src != self.rank:
            return number
        slots = self.outboxes[src].shape[0]
        readers = [r for r in range(self.workers) if r != self.rank]
        self._wait(cache, frames_per_block, lambda: all(self.counters[r, 1 + src] > number - slots for r in readers),
                   f"workers {readers} to copy out an earlier tick's K/V")
        _copy_owned(cache, owned, frames_per_block, out=self.outboxes[src][number % slots])
        self.counters[self.rank, 0] = number + 1
        return None  # nothing to receive from oneself

    def receive(self, cache, frames_per_block: int, below: int | None) -> None:
        """Copy out published K/V until nothing left carries a block lower than ``below``
        (everything for ``None``)."""
        self._wait(cache, frames_per_block,
                   lambda: not any(entry.needed_below(self.rank, below) for entry in self.pending),
                   "K/V from the other workers")

    def _copy_out_published(self, cache, frames_per_block: int) -> None:
        waiting_on: set[int] = set()  # owners whose next posting is not published yet
        kept = []
        for entry in self.pending:
            if entry.src in waiting_on or self.counters[entry.src, 0] <= entry.handle:
                waiting_on.add(entry.src)
                kept.append(entry)
                continue
            box = self.outboxes[entry.src]
            _write_received(cache, entry.blocks, box[entry.handle % box.shape[0]], frames_per_block)
            self.counters[self.rank, 1 + entry.src] = entry.handle + 1
        self.pending = kept

    def _wait(self, cache, frames_per_block: int, done, what: str) -> None:
        self._copy_out_published(cache, frames_per_block)
        deadline = None
        while not done():
            deadline = deadline or time.monotonic() + self.timeout_s
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.rank} waited {self.timeout_s:.0f} s for {what}")
            time.sleep(POLL_SLEEP_S)
            self._copy_out_published(cache, frames_per_block)


def shared_memory_possible(device: torch.device) -> bool:
    return (device.type == "cpu" and SHARED_MEMORY_DIR.is_dir()
            and platform.machine().lower() in TSO_MACHINES)


def open_shared_memory_exchange(rank: int, workers: int, per_block, dtype, max_blocks: int,
                                timeout_s: float, group=None) -> SharedMemoryExchange | None:
    """Collective: map every worker's outbox and the counters, or None (on every rank) when the
    workers do not share one memory (other hosts, or containers with their own /dev/shm)."""
    token = [secrets.token_hex(8) if rank == 0 else None]
    dist.broadcast_object_list(token, src=0, group=group)
    prefix = SHARED_MEMORY_DIR / f"cascade-kv-{token[0]}"
    width = 8 * ((2 + workers + 7) // 8)  # 64-byte rows (no false sharing); the last column holds rank 0's mark
    check = secrets.randbits(62)
    paths = [Path(f"{prefix}-counters")] + [Path(f"{prefix}-{r}") for r in range(workers)]
    numel = RING_SLOTS * max_blocks * torch.Size(per_block).numel()
    try:
        if rank == 0:
            counters = torch.from_file(str(paths[0]), shared=True, size=workers * width, dtype=torch.int64)
            counters.view(workers, width)[0, width - 1] = check
        own = torch.from_file(str(paths[1 + rank]), shared=True, size=numel, dtype=dtype)
        created = True
    except (OSError, RuntimeError):
        created = False
    checks = [None] * workers
    dist.all_gather_object(checks, (created, check if rank == 0 else None), group=group)
    ok = all(c for c, _ in checks)
    if ok and rank != 0:
        # from_file would create an empty file if rank 0's /dev/shm is not this one: look for its mark.
        ok = paths[0].exists() and paths[0].stat().st_size == workers * width * 8
        if ok:
            counters = torch.from_file(str(paths[0]), shared=True, size=workers * width, dtype=torch.int64)
            ok = int(counters.view(workers, width)[0, width - 1]) == checks[0][1]
    verdicts = [None] * workers
    dist.all_gather_object(verdicts, ok, group=group)
    if all(verdicts):
        boxes = [own if r == rank else torch.from_file(str(paths[1 + r]), shared=True, size=numel, dtype=dtype)
                 for r in range(workers)]
    dist.barrier(group=group)  # everyone has mapped what it needs: the names can go
    for path in ([paths[0]] if rank == 0 else []) + [paths[1 + rank]]:
        path.unlink(missing_ok=True)
    if not all(verdicts):
        return None
    shape = (RING_SLOTS, max_blocks, *per_block)
    return SharedMemoryExchange(rank, workers, [b.view(shape) for b in boxes],
                                counters.view(workers, width), timeout_s)

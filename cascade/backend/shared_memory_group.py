"""A torch.distributed backend for processes of one host: collectives through shared memory.

The tokens placement runs over a dozen collectives in every forward (Ulysses' two all-to-alls per
layer and a gather), each of a few tens of kB for the bundled model. Through gloo on loopback
each costs about 0.4 ms when both processes are idle and over a millisecond beside a busy peer
(two trips through the kernel and gloo's own threads, which take the core the forward runs on):
longer than the compute they split. Here a process writes its share into its outbox in shared
memory, bumps a counter and copies the others' shares straight out of theirs, so one exchange
costs a copy on each side and tens of microseconds of Python and polling.

It plugs in where torch.distributed takes third-party backends (``Backend.register_backend``, a
``ProcessGroup`` subclass, as torch's own threaded test backend does), so ``dist.all_to_all_single``
and ``dist.all_gather`` run on it unchanged: ``DeviceMesh``'s ``backend_override`` names it for
the Ulysses dimension. It implements what those and the object collectives call:
``all_to_all_single``, ``allgather``, ``broadcast`` and ``barrier``. Functional all-gathers
(diffusers' Ring attention's) need a C++ backend; those stay on gloo.

Layout of one group's file: a row of counters per rank (64 bytes, no false sharing; each written
only by its rank: collectives it posted, collectives it has read, and the rounds each of the two
phases needs), then two phases of one region per (source, destination) pair. Collective n uses
phase n mod 2; a rank posts it only once everyone has read collective n − 2, the last user of
that phase. A payload larger than a region goes in rounds, each its own collective number: the
first round's header says how many rounds the largest payload needs. Counters are plain int64
stores read by polling, correct where stores become visible in program order (x86-64), so it is
offered only there (``kv_exchange.shared_memory_possible``), like the K/V exchange.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future
from torch.futures import Future

from .kv_exchange import SHARED_MEMORY_DIR

BACKEND = "cascade_shm"
REGION_BYTES = 1 << 20  # a destination's share of one round; more goes in further rounds
_ROW = 8  # int64 counters per rank: posted, read, rounds of phase 0 and 1, the creator's mark
_POSTED, _READ, _ROUNDS, _MARK = 0, 1, 2, 7
SPINS_BEFORE_SLEEP = 2000
POLL_SLEEP_S = 20e-6


def register() -> str:
    """Make the backend known to torch.distributed in this process (idempotent); returns its name."""
    if BACKEND.upper() not in dist.Backend._plugins:
        dist.Backend.register_backend(BACKEND, SharedMemoryGroup.create, devices=["cpu"])
    return BACKEND


def _done() -> dist.Work:
    future = Future()
    future.set_result(None)
    return _create_work_from_future(future)


def _counter_bytes(size: int) -> int:
    return size * _ROW * 8


def _counters(memory: torch.Tensor, size: int) -> torch.Tensor:
    return memory[:_counter_bytes(size)].view(torch.int64).view(size, _ROW)


def _map_rank_zeros(store, rank: int, total: int, size: int) -> torch.Tensor:
    name, mark = store.get("file").decode().split()
    path = Path(name)
    if not path.exists() or path.stat().st_size != total:
        raise RuntimeError(f"rank {rank} cannot see rank 0's shared memory {path}: "
                           f"the {BACKEND} backend needs every process of a group on one host")
    memory = torch.from_file(str(path), shared=True, size=total, dtype=torch.uint8)
    if int(_counters(memory, size)[0, _MARK]) != int(mark):
        raise RuntimeError(f"rank {rank} sees another shared memory than rank 0 at {path}: "
                           f"the {BACKEND} backend needs every process of a group on one host")
    return memory


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1).view(torch.uint8)


class SharedMemoryGroup(dist.ProcessGroup):
    """One process group's collectives through one shared-memory file (see the module's doc)."""

    def __init__(self, rank: int, size: int, memory: torch.Tensor, timeout_s: float):
        super().__init__(rank, size)
        self._rank, self._size, self.timeout_s = rank, size, timeout_s
        self._counters = _counters(memory, size).numpy()
        boxes = memory[_counter_bytes(size):].view(2, size, size, REGION_BYTES)
        # [phase][source][destination]: one flat region each, indexed once here rather than per collective
        self._regions = [[list(boxes[phase, src]) for src in range(size)] for phase in range(2)]
        self._sequence = 0  # collectives (rounds) this rank has posted

    @staticmethod
    def create(store, rank: int, size: int, timeout) -> "SharedMemoryGroup":
        """torch.distributed's constructor, on every rank of a new group: rank 0 makes the file
        and names it in the group's store; the others map it and check rank 0's mark (under
        another /dev/shm the name would give them a new, empty file). Rank 0 removes the name
        once everyone has mapped the file, or when that fails."""
        total = _counter_bytes(size) + 2 * size * size * REGION_BYTES
        timeout_s = timeout.total_seconds()
        if rank != 0:
            memory = _map_rank_zeros(store, rank, total, size)
            store.add("mapped", 1)
            return SharedMemoryGroup(rank, size, memory, timeout_s)
        path = SHARED_MEMORY_DIR / f"cascade-group-{secrets.token_hex(8)}"
        try:
            memory = torch.from_file(str(path), shared=True, size=total, dtype=torch.uint8)
            mark = secrets.randbits(62)
            _counters(memory, size)[0, _MARK] = mark
            store.set("file", f"{path} {mark}")
            _wait_until(lambda: store.add("mapped", 0) == size - 1, timeout_s,
                        f"the {size} ranks of a new group to map its shared memory")
        finally:
            path.unlink(missing_ok=True)
        return SharedMemoryGroup(rank, size, memory, timeout_s)

    # --- what torch.distributed asks of a ProcessGroup -------------------------------------------

    def getBackendName(self) -> str:
        return BACKEND

    def size(self) -> int:
        return self._size

    @property
    def group_name(self) -> str:
        return dist.distributed_c10d._world.pg_names[self]

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        sends = _split_bytes(input, input_split_sizes, self._size)
        receives = _split_bytes(output, output_split_sizes, self._size)
        self._exchange(sends, receives)
        return _done()

    def allgather(self, output_tensors, input_tensors, opts=None):
        mine = _bytes(input_tensors[0].contiguous())
        outputs = [_Destination(t) for t in output_tensors[0]]
        self._exchange([mine] * self._size, [o.bytes for o in outputs])
        for o in outputs:
            o.finish()
        return _done()

    def broadcast(self, tensors, opts):
        destination = _Destination(tensors[0])
        source = _bytes(tensors[0].contiguous())
        root = opts.rootRank
        empty = source[:0]
        sends = [source if self._rank == root else empty] * self._size
        receives = [destination.bytes if r == root else empty for r in range(self._size)]
        self._exchange(sends, receives)
        if self._rank != root:
            destination.finish()
        return _done()

    def barrier(self, opts=None):
        nothing = torch.empty(0, dtype=torch.uint8)
        self._exchange([nothing] * self._size, [nothing] * self._size)
        return _done()

    # --- the exchange -----------------------------------------------------------------------------

    def _exchange(self, sends: list[torch.Tensor], receives: list[torch.Tensor]) -> None:
        """Every rank's ``sends[d]`` (bytes) lands in rank d's ``receives[src]``, in rounds of
        ``REGION_BYTES`` per destination; the first round's headers give the number of rounds.
        A rank's share for itself is copied straight across, not through its outbox."""
        receives[self._rank].copy_(sends[self._rank])
        rounds = max([1, *(-(-s.numel() // REGION_BYTES) for d, s in enumerate(sends) if d != self._rank)])
        done = 0
        while True:
            phase = self._post(sends, done * REGION_BYTES, rounds)
            if done == 0:
                rounds = int(self._counters[:, _ROUNDS + phase].max())
            self._read(receives, done * REGION_BYTES, phase)
            done += 1
            if done == rounds:
                return

    def _post(self, sends, offset: int, rounds: int) -> int:
        """Write this round's shares and wait until every rank has posted the round; its phase."""
        number = self._sequence
        phase = number & 1
        self._wait(_READ, number - 1, "the other ranks to read an earlier collective")
        outbox = self._regions[phase][self._rank]
        for destination, (region, data) in enumerate(zip(outbox, sends)):
            part = data[offset: offset + REGION_BYTES]
            if part.numel() and destination != self._rank:
                region[: part.numel()].copy_(part)
        self._counters[self._rank, _ROUNDS + phase] = rounds
        self._sequence = number + 1
        self._counters[self._rank, _POSTED] = number + 1
        self._wait(_POSTED, number + 1, "the other ranks to join a collective")
        return phase

    def _read(self, receives, offset: int, phase: int) -> None:
        inboxes = self._regions[phase]
        for src, out in enumerate(receives):
            part = out[offset: offset + REGION_BYTES]
            if part.numel() and src != self._rank:
                part.copy_(inboxes[src][self._rank][: part.numel()])
        self._counters[self._rank, _READ] = self._sequence

    def _wait(self, column: int, least: int, what: str) -> None:
        """Until every rank's counter ``column`` is at least ``least``: polling, then sleeping."""
        counts = self._counters[:, column]
        for _ in range(SPINS_BEFORE_SLEEP):
            if counts.min() >= least:
                return
        _wait_until(lambda: counts.min() >= least, self.timeout_s, f"{what} (rank {self._rank}, {BACKEND})")


def _wait_until(done, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(POLL_SLEEP_S)


class _Destination:
    """Bytes a collective writes into ``tensor``: its own when contiguous, else a buffer copied in."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.buffer = tensor if tensor.is_contiguous() else torch.empty_like(tensor, memory_format=torch.contiguous_format)
        self.bytes = _bytes(self.buffer)

    def finish(self) -> None:
        if self.buffer is not self.tensor:
            self.tensor.copy_(self.buffer)


def _split_bytes(tensor: torch.Tensor, split_sizes, parts: int) -> list[torch.Tensor]:
    """``tensor``'s bytes cut along dim 0 by ``split_sizes`` (equal parts when empty)."""
    if not tensor.is_contiguous():
        raise ValueError(f"{BACKEND} exchanges contiguous tensors")
    rows = tensor.shape[0]
    sizes = list(split_sizes) if split_sizes else [rows // parts] * parts
    row_bytes = tensor.numel() // max(rows, 1) * tensor.element_size()
    return list(_bytes(tensor).split([s * row_bytes for s in sizes]))

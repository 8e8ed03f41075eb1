"""The measured time of collectives on W processes of this machine (bench_gpu's sequence-parallel
projection): gloo between CPU processes, NCCL between W GPUs, one process per GPU.

``measure({name: [(kind, nbytes), ...]}, ranks)`` starts ``ranks`` processes; each runs every
group's collectives one after another (``kind``: "all_to_all", a tensor of ``nbytes`` on each rank
split into equal parts, one per rank; "all_gather", every rank's ``nbytes`` to every rank), once to
warm up, then ``repeats`` times with a barrier before each; a group's seconds are the median over
the repeats of the slowest rank's. Collectives move bytes whatever their type, so the tensors are
bytes. Only torch is imported here: the processes start quickly.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

KINDS = ("all_to_all", "all_gather")


def measure(groups: dict[str, list[tuple[str, int]]], ranks: int, device: str = "cpu", repeats: int = 5) -> dict:
    """Seconds of each group of collectives on ``ranks`` processes (``device`` "cuda": rank r on
    cuda:r, so it needs ``ranks`` GPUs)."""
    for kind, nbytes in (c for group in groups.values() for c in group):
        if kind not in KINDS or (kind == "all_to_all" and nbytes % ranks):
            raise ValueError(f"cannot time {kind} of {nbytes} bytes on {ranks} ranks")
    if device == "cuda" and torch.cuda.device_count() < ranks:
        raise ValueError(f"timing collectives on {ranks} GPUs needs {ranks} GPUs, this machine has "
                         f"{torch.cuda.device_count()}")
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as folder:
        init = (Path(folder) / "rendezvous").as_uri()
        mp.start_processes(_rank, args=(ranks, init, device, groups, repeats, results), nprocs=ranks,
                           start_method="spawn")
        times = [results.get() for _ in range(ranks)]  # each rank: {group: [seconds per repeat]}
    return {name: statistics.median(max(rank[name][r] for rank in times) for r in range(repeats))
            for name in groups}


def _rank(rank: int, ranks: int, init: str, device: str, groups: dict, repeats: int, results) -> None:
    torch.set_num_threads(1)
    on = torch.device(f"cuda:{rank}" if device == "cuda" else "cpu")
    if on.type == "cuda":
        torch.cuda.set_device(on)
    dist.init_process_group("nccl" if on.type == "cuda" else "gloo", init_method=init, rank=rank, world_size=ranks)
    try:
        buffers = {name: [_buffers(kind, nbytes, ranks, on) for kind, nbytes in group] for name, group in groups.items()}
        seconds = {name: [] for name in groups}
        for repeat in range(repeats + 1):  # the first is the warm-up
            for name, group in groups.items():
                dist.barrier()
                start = time.perf_counter()
                for (kind, _), (inputs, outputs) in zip(group, buffers[name]):
                    if kind == "all_to_all":
                        dist.all_to_all_single(outputs, inputs)
                    else:
                        dist.all_gather(outputs, inputs)
                if on.type == "cuda":
                    torch.cuda.synchronize(on)
                if repeat:
                    seconds[name].append(time.perf_counter() - start)
        results.put(seconds)
        dist.barrier()  # no rank tears its group down while another still measures
    finally:
        dist.destroy_process_group()


def _buffers(kind: str, nbytes: int, ranks: int, device: torch.device):
    inputs = torch.zeros(nbytes, dtype=torch.uint8, device=device)
    if kind == "all_to_all":
        return inputs, torch.empty_like(inputs)
    return inputs, [torch.empty_like(inputs) for _ in range(ranks)]

"""The ``cascade_shm`` torch.distributed backend against gloo as the oracle: the same collectives
on the same inputs, on three processes, give the same bytes."""

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from cascade.backend import shared_memory_group
from cascade.backend.kv_exchange import shared_memory_possible

REPO = Path(__file__).resolve().parent.parent
RANKS = 3

pytestmark = pytest.mark.skipif(not shared_memory_possible(__import__("torch").device("cpu")),
                                reason="needs /dev/shm on an x86-64 host")

# Every rank runs the same cases in the same order (collectives), each on gloo and on cascade_shm,
# and writes which cases gave different results. Sizes are drawn from one seed on every rank, so
# every rank knows every rank's splits; some payloads span several 1 MiB rounds, some are empty.
SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
from cascade.backend import shared_memory_group

dist.init_process_group("gloo")
shm = dist.new_group(backend=shared_memory_group.register())
rank, ranks = dist.get_rank(), dist.get_world_size()
draw = torch.Generator().manual_seed(7)
wrong = []

def both(name, run):
    on_gloo, on_shm = run(dist.group.WORLD), run(shm)
    if not all(torch.equal(a, b) for a, b in zip(on_gloo, on_shm)):
        wrong.append(name)

def data(rows, row, dtype):
    return (torch.randn(rows, row) * 100).to(dtype) + rank

for case in range(12):
    dtype = (torch.float32, torch.bfloat16, torch.int64)[case % 3]
    row = (5, 1, 96 * 1024)[case % 3]  # the last: 384 KiB (int64) per row, so a pair's share takes rounds
    rows = torch.randint(0, 4, (ranks, ranks), generator=draw)  # rows[src][dst]
    mine = data(int(rows[rank].sum()), row, dtype)

    def all_to_all(group):
        out = torch.empty(int(rows[:, rank].sum()), row, dtype=dtype)
        dist.all_to_all_single(out, mine, rows[:, rank].tolist(), rows[rank].tolist(), group=group)
        return [out]
    both(f"all_to_all {case}", all_to_all)

    def all_gather(group):
        parts = [torch.empty_like(mine) for _ in range(ranks)]
        dist.all_gather(parts, mine, group=group)
        return parts
    if len(set(rows.sum(1).tolist())) == 1:  # an all-gather takes equal sizes
        both(f"all_gather {case}", all_gather)

    def broadcast(group):
        out = (torch.arange(21).view(3, 7) * (rank + 1) + case).to(dtype).t()  # not contiguous: via a buffer
        dist.broadcast(out, src=case % ranks, group=group)
        return [out]
    both(f"broadcast {case}", broadcast)

dist.barrier(group=shm)
objects = [None] * ranks
dist.all_gather_object(objects, {"rank": rank, "text": "x" * (rank * 1000)}, group=shm)
if objects != [{"rank": r, "text": "x" * (r * 1000)} for r in range(ranks)]:
    wrong.append("all_gather_object")
Path = __import__("pathlib").Path
(Path(sys.argv[1]) / f"{rank}.json").write_text(json.dumps(wrong))
dist.barrier()
dist.destroy_process_group()
"""


def test_collectives_give_gloos_results_on_three_processes(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}",
               str(script), str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                  "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(RANKS)] == [[]] * RANKS
    assert not list(Path("/dev/shm").glob("cascade-group-*")), "a group's file outlived its mapping"


def test_a_rank_that_cannot_see_rank_zeros_memory_fails_in_one_line():
    store = dist.HashStore()
    store.set("file", "/dev/shm/cascade-group-missing 12345")
    with pytest.raises(RuntimeError, match="rank 1 cannot see rank 0's shared memory .*every process of a group on one host"):
        shared_memory_group.SharedMemoryGroup.create(store, 1, 2, timedelta(seconds=1))


def test_rank_zero_gives_up_on_ranks_that_never_map_and_leaves_no_file():
    before = set(Path("/dev/shm").glob("cascade-group-*"))
    with pytest.raises(RuntimeError, match="waited 0 s for the 2 ranks of a new group to map its shared memory"):
        shared_memory_group.SharedMemoryGroup.create(dist.HashStore(), 0, 2, timedelta(seconds=0.2))
    assert set(Path("/dev/shm").glob("cascade-group-*")) == before

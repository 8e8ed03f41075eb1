"""benchmarks/bench_placements.py: its rows and table, on the smallest run (no timing asserted)."""

import json

from benchmarks import bench_placements


def test_a_row_runs_all_three_and_the_sequence_run_equals_serial(tmp_path):
    bench_placements.main(["--pixels", "64", "--repeats", "1", "--out", str(tmp_path)])
    (row,) = json.loads((tmp_path / "bench_placements.json").read_text())["rows"]
    assert row["tokens_per_frame"] == 64
    assert row["sequence_max_diff"] <= 1e-4
    # serial: 4 blocks x 2 steps + 3 recaches = 11 forwards; W2 s1: blocks 0 and 1 at ticks 0-2 and 1-3,
    # blocks 2 and 3 (same workers) at 3-5 and 4-5: 6 ticks, one item per worker in each
    assert row["cascade_bound"] == 11 / 6
    assert row["sequence_bound"] == 2.0
    table = (tmp_path / "bench_placements.md").read_text()
    assert "| 64×64 | 64 |" in table and table.count("\n| ") == 2  # the header and one row

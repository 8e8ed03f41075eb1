"""cascade.bench's timing rounds, with the runs faked (timings are never asserted)."""

from types import SimpleNamespace

import pytest

from cascade import bench
from cascade.service import GenerateRequest


def test_timed_rounds_warm_each_job_then_visit_every_job_per_round(monkeypatch):
    calls = []
    latencies = {"a": iter([9.0, 3.0, 1.0, 2.0]), "b": iter([9.0, 5.0, 7.0, 6.0])}

    def fake_run_on(request, model, executor):
        calls.append(request.prompt)
        latency = next(latencies[request.prompt])
        stats = dict(latency_s=latency, fps=1.0, block_fps=1.0, time_to_first_block_s=0.1, ticks=4, forwards=4,
                     model_calls=4, workers=1, threads=1, kv_exchange=None)
        return SimpleNamespace(stats=stats)

    monkeypatch.setattr(bench, "run_on", fake_run_on)
    monkeypatch.setattr(bench, "get_model", lambda name: None)
    jobs = [(GenerateRequest(prompt="a"), None), (GenerateRequest(prompt="b"), None)]
    a, b = bench.timed_rounds(jobs, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert (a["latency_s"], a["latencies_s"]) == (2.0, [1.0, 2.0, 3.0])  # the warm-up (9 s) is not counted
    assert (b["latency_s"], b["latencies_s"]) == (6.0, [5.0, 6.0, 7.0])
    assert a["communication_share"] is None


def test_bench_bwcache_keeps_only_rows_on_this_process():
    args = bench_args(["--bwcache", "--bwcache-threshold", "0.3"])
    assert (args.bwcache, args.bwcache_threshold) == (True, 0.3)
    rows = bench.variants(quick=False, distributed=False)
    assert rows and all(row["executor"] != "distributed" for row in rows)
    assert [r for r in bench.variants(quick=False) if r["executor"] != "distributed"] == rows
    assert any(r["executor"] == "distributed" for r in bench.variants(quick=True))


def bench_args(extra):
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(["--json", "out.json", *extra])


def test_bench_with_bwcache_runs_every_local_row_with_the_cache(tmp_path):
    import json

    from cascade.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--bwcache", "--bwcache-threshold", "0.3", "--model", "random-tiny",
                 "--blocks", "2", "--prompts", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bwcache"] == 0.3
    assert [r["name"] for r in report["runs"]] == [v["name"] for v in bench.variants(True, distributed=False)]
    assert report["end_to_end_serial_16_steps_bwcache"]["steps"] == 16


def test_summary_picks_the_best_cascade_of_each_comparison_with_its_share_of_the_bound():
    def row(name, executor, threads, x1, x2, cascade=True, recache=True):
        return dict(name=name, executor=executor, threads=threads, cascade=cascade, recache=recache,
                    speedup_vs_serial_1_core=x1, speedup_vs_serial_2_cores=x2)

    runs = [
        row("serial, 2 cores", "local", 2, 1.4, 1.0, cascade=False),
        row("pool s1", "distributed", 1, 1.8, 1.25),
        row("pool s2", "distributed", 1, 1.7, 1.30),
        row("pool no recache", "distributed", 1, 2.2, 1.6, recache=False),
        row("joint", "local", 2, 1.6, 1.15),
        row("batched no recache", "batched", 2, 1.9, 1.5, recache=False),
    ]
    picked = bench.summary(runs, bound_a=2.0, bound_b=1.25)
    assert {k: (v["variant"], v["speedup"]) for k, v in picked.items()} == {
        "paper_same_forwards": ("pool s1", 1.8),
        "paper_no_recache": ("pool no recache", 2.2),
        "same_compute": ("pool s2", 1.30),
        "same_compute_one_device": ("joint", 1.15),
    }
    assert picked["paper_same_forwards"]["share_of_bound"] == pytest.approx(0.9)
    assert picked["same_compute_one_device"]["share_of_bound"] == pytest.approx(1.15 / 1.25)

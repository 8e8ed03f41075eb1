"""cascade.bench's timing rounds, with the runs faked (timings are never asserted)."""

from types import SimpleNamespace

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

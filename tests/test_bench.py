"""cascade.bench's timing rounds, with the runs faked (timings are never asserted)."""

from types import SimpleNamespace

import pytest

from cascade import bench
from cascade.service import GenerateRequest


def test_timed_rounds_warm_each_job_then_visit_every_job_per_round(monkeypatch):
    calls = []
    latencies = {"a": iter([9.0, 3.0, 1.0, 2.0]), "b": iter([9.0, 5.0, 7.0, 6.0])}

    class FakeService:
        def generate(self, request, files=True):
            assert not files
            calls.append(request.prompt)
            latency = next(latencies[request.prompt])
            stats = dict(latency_s=latency, fps=1.0, block_fps=1.0, time_to_first_block_s=0.1, steps=4, ticks=4,
                         forwards=4, model_calls=4, workers=1, threads=1, kv_exchange=None, bwcache={"enabled": False})
            return SimpleNamespace(stats=stats)

    a, b = bench.timed_rounds(FakeService(), [GenerateRequest(prompt="a"), GenerateRequest(prompt="b")], repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert (a["latency_s"], a["latencies_s"]) == (2.0, [1.0, 2.0, 3.0])  # the warm-up (9 s) is not counted
    assert (b["latency_s"], b["latencies_s"]) == (6.0, [5.0, 6.0, 7.0])
    assert a["communication_share"] is None


def test_bench_has_both_accelerations_on_the_pool_against_plain_serial_at_4_and_16_steps():
    args = bench_args(["--bwcache", "--bwcache-threshold", "0.3"])
    assert (args.bwcache, args.bwcache_threshold) == (True, 0.3)
    rows = bench.variants(quick=True)
    both = [r for r in rows if r["changes"].get("bwcache")]
    assert [r["changes"].get("steps") for r in both] == [None, 16]
    assert all(r["executor"] == "distributed" and r["threads"] == 1 and r["changes"]["mode"] == "cascade" for r in both)
    serial = {r["changes"].get("steps") for r in rows if r["name"].startswith("serial, 1 core")}
    assert serial == {None, 16}


def bench_args(extra):
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(["--json", "out.json", *extra])


def test_bench_with_bwcache_runs_every_row_with_the_cache(tmp_path):
    import json

    from cascade.__main__ import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--bwcache", "--bwcache-threshold", "0.3", "--model", "random-tiny",
                 "--blocks", "2", "--prompts", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bwcache"] == 0.3
    assert [r["name"] for r in report["runs"]] == [v["name"] for v in bench.variants(True)]
    assert all(r["bwcache"]["enabled"] for r in report["runs"])
    assert report["end_to_end_serial_16_steps_bwcache"]["steps"] == 16
    (both_16,) = [p for p in report["summary"]["both_accelerations"] if p["steps"] == 16]
    row = next(r for r in report["runs"] if r["name"] == both_16["variant"])
    serial_16 = next(r for r in report["runs"] if r["name"] == "serial, 1 core, 16 steps")
    assert both_16["speedup"] == serial_16["latency_s"] / row["latency_s"]
    assert both_16["product_bound"] == (serial_16["ticks"] / row["ticks"]) * row["bwcache"]["block_computation_reduction"]


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
        {**row("both at 16 steps", "distributed", 1, 3.5, None), "steps": 16, "product_bound": 4.0,
         "share_of_product_bound": 0.875},
    ]
    picked = bench.summary(runs, bound_a=2.0, bound_b=1.25)
    assert picked.pop("both_accelerations") == [
        {"variant": "both at 16 steps", "steps": 16, "speedup": 3.5, "product_bound": 4.0, "share_of_bound": 0.875}]
    assert {k: (v["variant"], v["speedup"]) for k, v in picked.items()} == {
        "paper_same_forwards": ("pool s1", 1.8),
        "paper_no_recache": ("pool no recache", 2.2),
        "same_compute": ("pool s2", 1.30),
        "same_compute_one_device": ("joint", 1.15),
    }
    assert picked["paper_same_forwards"]["share_of_bound"] == pytest.approx(0.9)
    assert picked["same_compute_one_device"]["share_of_bound"] == pytest.approx(1.15 / 1.25)


SEQUENCE_ROW = {"blocks": 8, "workers": 2, "threads": 1, "serial_latency_s": 1.0, "sequence_latency_s": 0.8,
                "speedups": [1.2, 1.25, 1.3], "speedup": 1.25, "bound": 2.0, "bound_with_communication": 1.6,
                "mean_communication_s": 0.1, "communication_s": 0.125, "communication_share": 0.15625,
                "max_abs_diff_255": 1}


def test_the_visitor_bench_takes_the_sequence_figures_of_its_median_comparison():
    import numpy as np

    from benchmarks.bench_visitor import sequence_figures

    def compared(speedup, communication, shift):
        serial = np.full((3, 2, 2, 3), 100, dtype=np.uint8)
        stats = {"serial": {"latency_s": 1.0}, "sequence_speedup": speedup,
                 "sequence": {"blocks": 8, "workers": 2, "threads": 1, "latency_s": 1.0 / speedup,
                              "communication_s": communication},
                 "sequence_plan": {"bound": 2.0, "bound_with_communication": 1.0 / (0.5 + communication),
                                   "mean_communication_s": communication / 1.25}}
        return SimpleNamespace(stats=stats, serial=SimpleNamespace(frames=serial),
                               sequence=SimpleNamespace(frames=serial - np.uint8(shift)))

    figures = sequence_figures([compared(1.3, 0.1, 3), compared(1.25, 0.125, 1), compared(1.2, 0.2, 2)])
    assert figures == SEQUENCE_ROW  # the median comparison's (1.25×), its frames 1/255 from serial's


def test_the_report_renders_the_sequence_rows_after_the_visitor_table(tmp_path, monkeypatch):
    import json

    from benchmarks import report

    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    rows = [{"steps": 4, "bwcache": None, "sequence": SEQUENCE_ROW},
            {"steps": 16, "bwcache": 0.15, "sequence": {**SEQUENCE_ROW, "speedup": 1.5, "max_abs_diff_255": 0}},
            {"steps": 4, "bwcache": 0.15}]  # a comparison without the third run (one device) has no row
    (results / "bench_visitor.json").write_text(json.dumps({"rows": rows}))
    (results / "bench_visitor.md").write_text("the visitor table\n")
    (tmp_path / "README.md").write_text(f"a\n{report.CARD_START}\n{report.CARD_END}\nb\n")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "RESULTS", results)
    assert report.main() == 0
    written = (tmp_path / "BENCHMARKS.md").read_text()
    visitor, sequence = written.split("the visitor table\n", 1)
    table = [line for line in sequence.splitlines() if line.startswith("| ")]
    assert table[1:] == [
        "| 4 | – | 8 | 2 × 1 thread | 1.000 | 0.800 | **1.25×** | 2.00× | 1.60× | 16% | max 1/255 |",
        "| 16 | δ 0.15 | 8 | 2 × 1 thread | 1.000 | 0.800 | **1.50×** | 2.00× | 1.60× | 16% | max 0/255 |",
    ]
    assert "## Sequence parallelism against serial" in sequence
    (results / "bench_visitor.json").write_text(json.dumps({"rows": rows[2:]}))
    assert report.sequence_section() is None

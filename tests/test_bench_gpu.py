"""benchmarks/bench_gpu.py on the CPU (--quick), and the CUDA paths it and LocalExecutor take,
with torch.cuda's calls stood in for. No timing is asserted."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from benchmarks import bench_gpu
from cascade.backend import LocalExecutor
from cascade.schedule import make_schedule

STEPS = 4
QUICK_BLOCKS = 2
# Stride-1 cascades of 2 blocks: block 1 starts one tick after block 0 whatever the window.
EXPECTED_TICKS = {
    "serial": QUICK_BLOCKS * (STEPS + 1) - 1,  # the last block has no recache
    "serial, no recache": QUICK_BLOCKS * STEPS,
    **{f"cascade W{w} s1": STEPS + 1 for w in (2, 3, 5)},
    **{f"cascade W{w} s1, no recache": STEPS + 1 for w in (2, 3, 5)},
}


def _quick(tmp_path, *extra) -> tuple[dict, str]:
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--quick", "--json", str(out), *extra]) == 0
    return json.loads(out.read_text()), out.with_suffix(".md").read_text()


def test_quick_run_measures_every_variant(tmp_path, capsys):
    report, table = _quick(tmp_path)
    rows = {r["name"]: r for r in report["variants"]}
    assert list(rows) == [v["name"] for v in bench_gpu.variants()]
    assert set(rows) == set(EXPECTED_TICKS)
    for name, row in rows.items():
        assert "error" not in row, row
        assert row["latency_s"] > 0 and row["fps_paper"] > 0 and len(row["latencies_s"]) == 1
        assert row["ticks"] == EXPECTED_TICKS[name]
        assert row["ideal_speedup"] == pytest.approx(EXPECTED_TICKS["serial"] / row["ticks"])
        assert row["fps_paper"] == pytest.approx(12 * QUICK_BLOCKS / row["latency_s"])
        assert row["peak_memory_gib"] is None  # CPU
        assert row["executor"] == ("local" if name.startswith("serial") else "batched")
    assert rows["serial"]["speedup_vs_serial"] == pytest.approx(1.0)
    assert report["model"] == "random-tiny" and report["blocks"] == QUICK_BLOCKS and report["quick"]
    assert report["steps"] == STEPS and report["torch"] == torch.__version__ and report["dtype"] == "float32"
    for name in rows:
        assert f"| {name} |" in table
    assert table in capsys.readouterr().out


def test_failing_variants_are_recorded_and_saved_as_they_go(tmp_path, monkeypatch):
    out = tmp_path / "gpu.json"

    def failing(model, variant, *args):
        if variant["name"] == "serial, no recache":
            on_disk = json.loads(out.read_text())
            assert [r["name"] for r in on_disk["variants"]] == ["serial"]  # flushed after the first
        raise RuntimeError(f"CUDA out of memory in {variant['name']}")

    monkeypatch.setattr(bench_gpu, "measure", failing)
    assert bench_gpu.main(["--quick", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["variants"]
    assert len(rows) == len(bench_gpu.variants())
    assert all(r["error"] == f"RuntimeError: CUDA out of memory in {r['name']}" for r in rows)
    table = out.with_suffix(".md").read_text()
    assert table.count("error: RuntimeError") == len(rows)
    assert all(line.count("|") == 11 for line in table.splitlines() if line.startswith("| "))


def test_cuda_asked_for_but_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench_gpu.main(["--json", str(tmp_path / "gpu.json"), "--device", "cuda"])
    assert not (tmp_path / "gpu.json").exists()


def test_cuda_report_header_and_memory_calls(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Fake H100")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", str(device))))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**30)
    monkeypatch.setattr(bench_gpu, "run", lambda args, report, save: None)  # no model on a fake GPU
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "cuda" and report["device_name"] == "Fake H100" and report["repeats"] == 3
    assert "Fake H100" in out.with_suffix(".md").read_text()

    cuda = torch.device("cuda")
    bench_gpu.reset_peak_memory(cuda)
    assert calls == ["empty", ("reset", "cuda")]
    assert bench_gpu.peak_memory_gib(cuda) == 3.0


class _FakeJob:
    """Enough of DenoiseJob for an executor that never touches the device it is told."""

    joint = False

    def new_cache(self, device):
        return type("Cache", (), {"commit": lambda self: None})()

    def initial_latent(self, block, device):
        return torch.zeros(1)

    def run(self, items, inputs, cache):
        return list(inputs)

    def session(self):
        return contextlib.nullcontext({})


@pytest.mark.parametrize("batched", [False, True])
def test_local_executor_waits_for_cuda_after_each_forward(monkeypatch, batched):
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(str(device)))
    schedule = make_schedule(3, STEPS, window=2, stride=1)
    result = LocalExecutor("cuda", batched=batched).execute(_FakeJob(), schedule)
    assert synced == ["cuda"] * (1 + result.model_calls)  # once before the clock starts
    assert result.model_calls == (schedule.num_ticks if batched else schedule.num_items)


def test_local_executor_never_synchronizes_on_cpu(monkeypatch):
    def refuse(device=None):
        raise AssertionError("synchronize called on the CPU")

    monkeypatch.setattr(torch.cuda, "synchronize", refuse)
    result = LocalExecutor("cpu").execute(_FakeJob(), make_schedule(2, STEPS))
    assert len(result.timeline) == 2 * (STEPS + 1) - 1  # the last block has no recache

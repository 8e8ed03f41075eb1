"""The GPU bench (cascade/bench_gpu.py; the script `python -m benchmarks.bench_gpu`) on the CPU
(--quick), and the CUDA paths it and LocalExecutor take, with torch.cuda's calls stood in for.
No timing is asserted."""

from __future__ import annotations

import argparse
import contextlib
import json

import pytest
import torch

from cascade import bench_gpu, collective_costs
from cascade.backend import LocalExecutor
from cascade.backend.local import torch_threads
from cascade.model.presets import TINY, LatentLayout, _random_model, preview_latents
from cascade.schedule import make_schedule

STEPS = 4
QUICK_BLOCKS = 2
# Stride-1 cascades of 2 blocks: block 1 starts one tick after block 0 whatever the window.
EXPECTED_TICKS = {
    "serial": QUICK_BLOCKS * (STEPS + 1) - 1,  # the last block has no recache
    "serial, no recache": QUICK_BLOCKS * STEPS,
    **{f"cascade W{w} s1": STEPS + 1 for w in (2, 3, 5)},
    **{f"cascade W{w} s1, no recache": STEPS + 1 for w in (2, 3, 5)},
    **{f"cascade W{w} s1 joint": STEPS + 2 for w in (3, 5)},  # block 0's cache pass: a tick of its own
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and lose much when the cores are shared."""
    with torch_threads(1):
        yield


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
        assert row["tick_ratio"] == pytest.approx(EXPECTED_TICKS["serial"] / row["ticks"])
        assert row["fps_paper"] == pytest.approx(12 * QUICK_BLOCKS / row["latency_s"])
        assert row["peak_memory_gib"] is None  # CPU
        assert row["executor"] == ("local" if name.startswith("serial") or row["joint"] else "batched")
        assert row["end_to_end_s"] >= row["latency_s"] and row["fps_end_to_end"] > 0
        assert row["frames"] == 3 * QUICK_BLOCKS and row["forward_s"] > 0  # pixel space: a frame per latent frame
    assert rows["serial"]["speedup_vs_serial"] == pytest.approx(1.0)
    assert report["model"] == "random-tiny" and report["blocks"] == QUICK_BLOCKS and report["quick"]
    assert report["steps"] == STEPS and report["torch"] == torch.__version__ and report["dtype"] == "float32"
    for name in rows:
        assert f"| {name} |" in table
    assert table in capsys.readouterr().out
    (sequence,) = report["sequence_projection"]["rows"]  # quick: on 2 GPUs, its exchanges timed on 2 processes
    assert (sequence["gpus"], sequence["attention"], sequence["exchange"]) == (2, "ulysses", "measured, 2 gloo processes")
    assert sequence["layer_exchange_s"] > 0 and sequence["gather_s"] > 0
    assert sequence == {**sequence, **bench_gpu.sequence_row(rows["serial"], 2, 6, sequence["layer_exchange_s"],
                                                             sequence["gather_s"])}
    assert "**Sequence parallelism projected to W GPUs**" in table and "| 2 | ulysses | measured, 2 gloo" in table


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
    assert all(line.count("|") == 13 for line in table.splitlines() if line.startswith("| "))


def test_cuda_asked_for_but_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench_gpu.main(["--json", str(tmp_path / "gpu.json"), "--device", "cuda"])
    with pytest.raises(ValueError, match="CUDA is not available"):  # what `python -m cascade bench` prints
        bench_gpu.run_gpu(argparse.Namespace(json=tmp_path / "gpu.json", device="cuda", model=None, blocks=8))
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

    def one_forward(self, items):
        return False

    def new_cache(self, device):
        return type("Cache", (), {"commit": lambda self: None})()

    def initial_latent(self, block, device):
        return torch.zeros(1)

    def run(self, items, inputs, cache):
        return list(inputs)

    def session(self, cache):
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


def test_projection_counts_ticks_forwards_and_kv_transfers():
    rows = [dict(name="serial", window=1, ticks=9, latency_s=0.9, forward_s=0.1, text_s=0.2, decode_s=0.3,
                 frames=21, joint=False),
            dict(name="cascade W2 s1", window=2, ticks=5, latency_s=0.6, joint=False),
            dict(name="cascade W3 s1 joint", window=3, ticks=5, latency_s=0.5, joint=True),
            dict(name="cascade W5 s1", window=5, error="RuntimeError: out of memory")]
    projected = bench_gpu.projection(rows, kv_bytes=2 * 10**9, link_gb_per_s=100.0, blocks=2)
    assert [r["name"] for r in projected["rows"]] == ["cascade W2 s1"]  # joint runs on one device
    row = projected["rows"][0]
    assert row["comm_per_tick_s"] == pytest.approx(0.02)  # 2 GB to 1 other GPU at 100 GB/s
    assert row["denoise_s"] == pytest.approx(5 * 0.12)
    assert row["end_to_end_s"] == pytest.approx(0.2 + 0.6 + 0.3)
    assert row["fps_end_to_end"] == pytest.approx(21 / 1.1) and row["fps_paper"] == pytest.approx(24 / 0.6)
    assert row["speedup_vs_serial"] == pytest.approx(0.9 / 0.6)
    table = bench_gpu.projection_lines(projected)
    assert "computed, not measured" in table[1] and "100 GB/s" in table[1] and "| cascade W2 s1 | 2 | 5 |" in table[-1]


WAN_LIKE = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
                text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=64)


def test_wan_latent_models_are_timed_with_text_encoder_and_vae_end_to_end(tmp_path, monkeypatch):
    """Full-size umT5 and VAE stand in tiny here: the same code builds the real sizes on a GPU."""
    model = _random_model("random-wan-like", WAN_LIKE, LatentLayout(16, 3, 2, 2), preview_latents, 16.0, "cpu",
                          torch.float32, "Wan-like latents, random weights")
    monkeypatch.setattr(bench_gpu, "load_model", lambda name, device, dtype: model)
    monkeypatch.setattr(bench_gpu, "TEXT_ENCODER_CONFIG", dict(
        vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    monkeypatch.setattr(bench_gpu, "VAE_CONFIG", dict(base_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1))
    every_variant = bench_gpu.variants
    monkeypatch.setattr(bench_gpu, "variants", lambda: every_variant()[:3])
    out = tmp_path / "gpu.json"
    assert bench_gpu.main(["--json", str(out), "--device", "cpu", "--blocks", "2", "--repeats", "1",
                           "--sequence-gpus", "2"]) == 0
    report = json.loads(out.read_text())
    assert "umT5 and VAE with random weights" in report["description"]
    serial = report["variants"][0]
    assert serial["frames"] == 1 + 4 * 5  # the Wan VAE: 1 frame for the first latent frame, 4 for each later
    assert serial["text_s"] > 0 and serial["decode_s"] > 0
    assert report["kv_block_bytes"] == 2 * 2 * 3 * 1 * 16 * 4  # K and V, 2 layers, 3 frames of 1 token, 16 dims
    assert [r["name"] for r in report["projection"]["rows"]] == ["cascade W2 s1"]


# Wan2.1-1.3B at 480×832: 30 layers of 12 heads × 128 dims in bf16, 3 latent frames of 30 × 52 tokens per block
WAN_1_3B_480P = dict(layers=30, heads=12, head_dim=128, element_bytes=2, tokens_per_frame=1560, frames_per_block=3,
                     mean_context_frames=9.0)


def test_sequence_exchanges_are_ulysses_all_to_alls_where_the_heads_divide_else_rings_kv_gather():
    token = 12 * 128 * 2  # bytes of one token of Q, K, V or hidden states
    ulysses = bench_gpu.sequence_exchanges(WAN_1_3B_480P, 4)
    block = 3 * 390 * token  # a quarter of each frame's tokens
    assert ulysses == {"attention": "ulysses", "layer": [("all_to_all", 3 * block), ("all_to_all", block)],
                       "gather": [("all_gather", block)]}
    ring = bench_gpu.sequence_exchanges(WAN_1_3B_480P, 8)  # 12 heads do not divide by 8
    block = 3 * 195 * token
    assert ring == {"attention": "ring", "layer": [("all_gather", 2 * (block + 9 * 195 * token))],
                    "gather": [("all_gather", block)]}
    assert bench_gpu.sequence_exchanges(WAN_1_3B_480P, 7)["layer"][0][1] % 223 == 0  # 1560 / 7: the largest share, 223


def test_modelled_exchanges_are_the_bytes_each_rank_receives_over_the_link():
    collectives = [("all_to_all", 4 * 10**9), ("all_gather", 10**9)]
    # an all-to-all on 4 ranks brings 3/4 of a rank's size, an all-gather 3 others' sizes: 6 GB at 100 GB/s
    assert bench_gpu.modelled_seconds(collectives, 4, 100.0) == pytest.approx(0.06)


def test_the_sequence_projection_is_serial_over_a_shared_forward_plus_its_exchanges():
    serial = dict(latency_s=2.2, forwards=20, forward_s=0.1)
    row = bench_gpu.sequence_row(serial, 4, layers=30, layer_s=0.0005, gather_s=0.001)
    assert row["communication_per_forward_s"] == pytest.approx(30 * 0.0005 + 0.001)
    assert row["compute_per_forward_s"] == pytest.approx(0.025)
    assert row["denoise_s"] == pytest.approx(20 * (0.025 + 0.016))
    assert row["speedup_vs_serial"] == pytest.approx(2.2 / (20 * 0.041))
    assert row["communication_share"] == pytest.approx(0.016 / 0.041)
    free = [bench_gpu.sequence_row(serial, gpus, 30, 0.0, 0.0)["speedup_vs_serial"] for gpus in (2, 4, 8)]
    assert free == pytest.approx([gpus * 2.2 / 2.0 for gpus in (2, 4, 8)])  # W × serial latency / its forwards
    slower = [bench_gpu.sequence_row(serial, 4, 30, layer_s, 0.001)["speedup_vs_serial"] for layer_s in (0, 1e-4, 1e-3)]
    assert slower == sorted(slower, reverse=True) and slower[-1] < free[1]


def test_collectives_are_timed_on_the_processes_asked_for():
    seconds = collective_costs.measure({"layer": [("all_to_all", 64)] * 4, "gather": [("all_gather", 32)]}, 2,
                                       repeats=2)
    assert set(seconds) == {"layer", "gather"} and all(s > 0 for s in seconds.values())
    with pytest.raises(ValueError, match="cannot time all_to_all of 63 bytes on 2 ranks"):
        collective_costs.measure({"layer": [("all_to_all", 63)]}, 2)


def test_a_gpu_count_whose_exchanges_fail_is_recorded_and_the_others_projected(monkeypatch):
    def seconds(exchanges, gpus, device, link_gb_per_s):
        if gpus == 3:
            raise RuntimeError("no port")
        return {"layer": 0.001, "gather": 0.002}, "measured, fake"

    monkeypatch.setattr(bench_gpu, "exchange_seconds", seconds)
    serial = dict(name="serial", latency_s=1.0, forwards=9, forward_s=0.1)
    cascades = [{"gpus": 2, "speedup_vs_serial": 1.5}, {"gpus": 2, "speedup_vs_serial": 1.7}]
    report = {"blocks": 2, "variants": [serial], "projection": {"rows": cascades}}
    projected = bench_gpu.sequence_projection(_random_model("random-tiny", TINY, LatentLayout(3, 3, 64, 64),
                                                            preview_latents, 8.0, "cpu", torch.float32, "tiny"),
                                              report, (2, 3), torch.device("cpu"), 100.0)
    # 2 blocks of 4 steps: block 0's 5 forwards see no context, block 1's 4 see its 3 frames
    assert projected["geometry"] == {"layers": 6, "heads": 4, "head_dim": 48, "element_bytes": 4,
                                     "tokens_per_frame": 64, "frames_per_block": 3, "mean_context_frames": 12 / 9}
    two, three = projected["rows"]
    assert three == {"gpus": 3, "attention": "ring", "error": "RuntimeError: no port"}
    assert two["cascade_speedup_vs_serial"] == 1.7 and two["exchange"] == "measured, fake"
    assert two == {**two, **bench_gpu.sequence_row(serial, 2, 6, 0.001, 0.002)}
    table = [line for line in bench_gpu.sequence_lines(projected) if line.startswith("| ")]
    assert "error: RuntimeError: no port" in table[-1] and all(line.count("|") == 12 for line in table)

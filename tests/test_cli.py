"""The command line, in process, on the random-weight plumbing model."""

import json

import numpy as np
import pytest

from cascade.__main__ import main
from cascade.backend.pool import DistributedExecutor
from cascade.model.transformer import CausalWanTransformer

REQUIRED_STATS = {
    "mode", "model", "blocks", "steps", "frames", "height", "width", "workers", "window", "stride",
    "latency_s", "fps", "time_to_first_block_s", "ticks", "forwards", "timeline",
}


def test_generate_writes_video_frames_and_stats(tmp_path):
    out = tmp_path / "run"
    code = main(["generate", "--prompt", "a red circle moving right", "--model", "random-tiny", "--mode", "cascade",
                 "--blocks", "3", "--steps", "2", "--window", "2", "--stride", "1", "--seed", "5", "--out", str(out)])
    assert code == 0
    frames = np.load(out / "frames.npy")
    assert frames.dtype == np.uint8 and frames.shape == (9, 64, 64, 3)
    assert (out / "video.mp4").stat().st_size > 0
    stats = json.loads((out / "stats.json").read_text())
    assert REQUIRED_STATS <= set(stats)
    assert (stats["mode"], stats["blocks"], stats["steps"], stats["window"], stats["stride"]) == ("cascade", 3, 2, 2, 1)
    assert stats["forwards"] == len(stats["timeline"]) == 3 * (2 + 1) - 1  # the last block has no recache
    assert stats["frames"] == 9 and stats["random_weights"] is True


def test_serial_mode_ignores_window_and_counts_serial_ticks(tmp_path):
    code = main(["generate", "--prompt", "blue square", "--model", "random-tiny", "--blocks", "2", "--steps", "2",
                 "--no-recache", "--executor", "batched", "--out", str(tmp_path)])
    assert code == 0
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["window"], stats["ticks"], stats["forwards"], stats["executor"]) == (1, 4, 4, "batched")


BAD_VALUES = [
    (["--blocks", "0"], "blocks must be a whole number of at least 1, got 0"),
    (["--steps", "0"], "steps must be a whole number of at least 1, got 0"),
    (["--window", "0"], "window must be a whole number of at least 1, got 0"),
    (["--stride", "0"], "stride must be a whole number of at least 1, got 0"),
    (["--stride", "9", "--steps", "4"], "stride must be at most the items per block (4 steps + recache = 5), got 9"),
    (["--bwcache", "--bwcache-threshold", "nan"], "bwcache_threshold must be a number of at least 0, got nan"),
    (["--bwcache", "--bwcache-threshold", "-1"], "bwcache_threshold must be a number of at least 0, got -1.0"),
    (["--executor", "distributed", "--workers", "999"], "999 CPU workers need 999 cores; this machine has"),
]


@pytest.fixture
def work(monkeypatch) -> list[str]:
    """What a command has started so far: each forward of a model, each worker pool."""
    started = []
    forward, start = CausalWanTransformer.forward, DistributedExecutor.start

    def counted_forward(self, *args, **kwargs):
        started.append("forward")
        return forward(self, *args, **kwargs)

    def counted_start(self):
        started.append("pool")
        start(self)

    monkeypatch.setattr(CausalWanTransformer, "forward", counted_forward)
    monkeypatch.setattr(DistributedExecutor, "start", counted_start)
    return started


@pytest.mark.parametrize("command", [["generate", "--mode", "cascade"], ["compare"]], ids=["generate", "compare"])
@pytest.mark.parametrize("options, message", BAD_VALUES)
def test_bad_values_fail_with_one_clear_line_before_any_work(tmp_path, capsys, work, command, options, message):
    out = tmp_path / "out"
    assert main([*command, "--prompt", "x", "--model", "random-tiny", *options, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert work == [] and not out.exists()  # no forward ran, no pool started, no file written


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--prompt", "  ", "--model", "random-tiny", "--out", str(tmp_path)]) == 2
    assert "prompt is empty" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--model", "no-such-model", "--out", str(tmp_path)]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_compare_on_a_worker_pool_writes_both_runs_and_counts_speedup_as_the_paper(tmp_path, work):
    code = main(["compare", "--prompt", "a green square moving up", "--model", "random-tiny", "--blocks", "3",
                 "--steps", "2", "--window", "2", "--stride", "1", "--executor", "distributed", "--workers", "2",
                 "--threads", "1", "--out", str(tmp_path)])
    assert code == 0
    assert "pool" in work and "forward" in work  # what the bad-values test sees none of
    for name in ("serial.mp4", "cascade.mp4", "side_by_side.mp4"):
        assert (tmp_path / name).stat().st_size > 0
    serial, cascade = np.load(tmp_path / "frames_serial.npy"), np.load(tmp_path / "frames_cascade.npy")
    assert serial.shape == cascade.shape == (9, 64, 64, 3)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert set(stats) == {"serial", "cascade", "speedup", "ideal_speedup", "tick_ratio", "plan", "counted_as", "quality",
                          "quality_s", "files_s", "queued_s"}
    # the serial side runs on one worker of the kind each cascade worker is: one core
    assert (stats["serial"]["workers"], stats["serial"]["threads"], stats["serial"]["executor"]) == (1, 1, "local")
    assert (stats["cascade"]["workers"], stats["cascade"]["executor"]) == (2, "distributed")
    assert "one worker of the kind each of the 2 cascade workers is" in stats["counted_as"]
    assert {e["worker"] for e in stats["cascade"]["timeline"]} == {0, 1}
    assert stats["ideal_speedup"] == stats["plan"]["bound"]
    assert stats["tick_ratio"] == stats["serial"]["ticks"] / stats["cascade"]["ticks"]
    assert stats["speedup"] == stats["serial"]["latency_s"] / stats["cascade"]["latency_s"]
    assert stats["cascade"]["communication_bytes"] > 0
    assert {"psnr_db", "ssim"} <= set(stats["quality"])
    timeline = json.loads((tmp_path / "timeline.json").read_text())
    assert [e for e in timeline if e["run"] == "cascade"] == [{"run": "cascade", **e} for e in stats["cascade"]["timeline"]]
    assert {tuple(sorted(e)) for e in timeline} == {("block", "end", "run", "start", "step", "worker")}


def test_bwcache_option_reports_reuse_and_threshold_zero_changes_nothing(tmp_path):
    common = ["generate", "--prompt", "a red circle", "--model", "random-tiny", "--blocks", "2", "--steps", "8",
              "--no-recache", "--threads", "1"]
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert main(common + ["--bwcache", "--bwcache-threshold", "0", "--out", str(tmp_path / "zero")]) == 0
    assert main(common + ["--bwcache", "--bwcache-threshold", "1e9", "--out", str(tmp_path / "forced")]) == 0
    plain, zero, forced = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("plain", "zero", "forced"))
    assert plain["bwcache"] == {"enabled": False, "reuse_rate": 0.0, "block_computations": 16 * 6,
                                "block_computations_saved": 0}
    assert zero["bwcache"]["enabled"] and zero["bwcache"]["reuse_rate"] == 0.0
    assert np.array_equal(np.load(tmp_path / "plain" / "frames.npy"), np.load(tmp_path / "zero" / "frames.npy"))
    saved = forced["bwcache"]["block_computations_saved"]
    assert forced["bwcache"]["reuse_rate"] > 0 and saved > 0
    assert forced["bwcache"]["block_computations"] + saved == 16 * 6


def test_bwcache_on_a_worker_pool_gives_the_frames_of_the_local_run(tmp_path):
    common = ["generate", "--prompt", "a red circle moving right", "--mode", "cascade", "--blocks", "3",
              "--steps", "16", "--bwcache", "--bwcache-threshold", "0.3", "--threads", "1"]
    assert main([*common, "--executor", "distributed", "--workers", "2", "--out", str(tmp_path / "pool")]) == 0
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    pool, local = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("pool", "local"))
    assert pool["model"] == "tiny-shapes" and pool["executor"] == "distributed"
    assert 0 < pool["bwcache"]["reuse_rate"] == local["bwcache"]["reuse_rate"] < 1
    assert np.allclose(pool["bwcache"]["indicator"], local["bwcache"]["indicator"], atol=1e-4)
    frames = [np.load(tmp_path / d / "frames.npy").astype(int) for d in ("pool", "local")]
    assert np.abs(frames[0] - frames[1]).max() <= 1


def test_eval_scores_held_out_clips_and_records_the_cache(tmp_path):
    out = tmp_path / "eval.json"
    code = main(["eval", "--model", "random-tiny", "--mode", "cascade", "--prompts", "2", "--blocks", "2",
                 "--steps", "2", "--bwcache", "--bwcache-threshold", "0.2", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    # random-tiny has no quality table: a quarter of the 2 steps (at least 1), and both blocks in flight
    assert (report["mode"], report["window"], report["stride"], report["bwcache"]) == ("cascade", 2, 1, 0.2)
    assert report["prompts"] == len(report["items"]) == 2
    assert {"colour", "shape", "motion", "one_object"} <= set(report["summary"])


def test_serial_on_tokens_of_a_pool_gives_the_local_serial_frames(tmp_path):
    """The issue's bar: ``generate --mode serial --executor distributed --workers 2 --placement tokens``."""
    common = ["generate", "--prompt", "a red circle moving right", "--mode", "serial", "--blocks", "3",
              "--steps", "4", "--threads", "1"]
    assert main([*common, "--executor", "distributed", "--workers", "2", "--placement", "tokens",
                 "--out", str(tmp_path / "tokens")]) == 0
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    tokens, local = (json.loads((tmp_path / d / "stats.json").read_text()) for d in ("tokens", "local"))
    assert (tokens["model"], tokens["executor"], tokens["workers"], tokens["placement"]) == (
        "tiny-shapes", "distributed", 2, "tokens")
    assert tokens["forwards"] == local["forwards"] and tokens["model_calls"] == local["model_calls"]
    assert {e["worker"] for e in tokens["timeline"]} == {0, 1}
    frames = [np.load(tmp_path / d / "frames.npy").astype(int) for d in ("tokens", "local")]
    assert np.abs(frames[0] - frames[1]).max() <= 2


def test_compare_adds_the_sequence_run_on_the_same_pool(tmp_path):
    code = main(["compare", "--prompt", "a green square moving up", "--model", "random-tiny", "--blocks", "3",
                 "--steps", "2", "--window", "2", "--stride", "1", "--executor", "distributed", "--workers", "2",
                 "--threads", "1", "--runs", "serial,cascade,sequence", "--out", str(tmp_path)])
    assert code == 0
    for name in ("serial.mp4", "cascade.mp4", "sequence.mp4", "side_by_side.mp4"):
        assert (tmp_path / name).stat().st_size > 0
    serial, sequence = (np.load(tmp_path / f"frames_{run}.npy").astype(int) for run in ("serial", "sequence"))
    assert np.abs(serial - sequence).max() <= 2
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert {"sequence", "sequence_speedup", "sequence_plan"} <= set(stats)
    q = stats["sequence"]
    assert (q["mode"], q["placement"], q["workers"], q["forwards"]) == ("serial", "tokens", 2, stats["serial"]["forwards"])
    assert stats["sequence_speedup"] == stats["serial"]["latency_s"] / q["latency_s"]
    assert stats["sequence_plan"]["bound"] == 2 and stats["sequence_plan"]["placement"] == "tokens"
    assert 0 < stats["sequence_plan"]["mean_communication_s"] <= q["communication_s"] < q["latency_s"]
    assert stats["sequence_plan"]["bound_with_communication"] < 2
    assert {e["worker"] for e in q["timeline"]} == {0, 1}
    timeline = json.loads((tmp_path / "timeline.json").read_text())
    assert [e for e in timeline if e["run"] == "sequence"] == [{"run": "sequence", **e} for e in q["timeline"]]
    assert stats["cascade"]["placement"] == "blocks"


def test_the_sequence_run_needs_a_pool(tmp_path, capsys):
    assert main(["compare", "--prompt", "x", "--model", "random-tiny", "--runs", "serial,cascade,sequence",
                 "--out", str(tmp_path)]) == 2
    assert "the sequence run splits every forward over a pool's workers" in capsys.readouterr().err

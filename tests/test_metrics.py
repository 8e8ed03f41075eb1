import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from cascade.metrics import (
    block_completion_times,
    json_safe,
    mean_ci95,
    psnr,
    run_timing,
    ssim,
    steady_block_fps,
    t_quantile_975,
)


def item(block, step, worker, start, end):
    return {"block": block, "step": step, "worker": worker, "start": start, "end": end}


# Three blocks of two steps on two workers; block 2 ends with a recache forward.
TIMELINE = [
    item(0, 0, 0, 0.0, 1.0),
    item(0, 1, 0, 1.0, 2.0),
    item(1, 0, 1, 1.0, 2.0),
    item(1, 1, 1, 2.0, 3.0),
    item(2, 0, 0, 2.0, 3.0),
    item(2, 1, 0, 3.0, 4.5),
    item(2, "recache", 0, 4.5, 5.0),
]


def test_run_timing_on_hand_built_timeline():
    timing = run_timing(TIMELINE, frames_per_block=12, num_blocks=3)
    assert timing["latency_s"] == 5.0
    assert timing["time_to_first_block_s"] == 2.0
    assert timing["fps"] == pytest.approx(36 / 5)
    # Completions at 2, 3, 5: mean steady interval (5 - 2) / 2 = 1.5 s.
    assert timing["block_fps"] == pytest.approx(12 / 1.5)
    assert timing["forwards"] == 7
    assert timing["busy_share"] == {0: pytest.approx(1.0), 1: pytest.approx(0.4)}


def test_run_timing_accepts_objects_in_any_order():
    objects = [SimpleNamespace(**entry) for entry in reversed(TIMELINE)]
    assert run_timing(objects, 12, 3) == run_timing(TIMELINE, 12, 3)


def test_single_block_uses_its_latency():
    timeline = [item(0, 0, 0, 0.0, 0.5), item(0, 1, 0, 0.5, 2.0)]
    timing = run_timing(timeline, frames_per_block=4, num_blocks=1)
    assert timing["block_fps"] == pytest.approx(2.0)
    assert timing["fps"] == pytest.approx(2.0)


def test_block_completion_times_and_steady_fps():
    assert block_completion_times(TIMELINE, 3) == [2.0, 3.0, 5.0]
    assert steady_block_fps([3.0, 1.0, 2.0], 6) == pytest.approx(6.0)
    assert steady_block_fps([1.0, 1.0], 6) == math.inf


@pytest.mark.parametrize(
    "timeline, num_blocks, message",
    [
        ([], 1, "empty"),
        ([{"block": 0, "step": 0, "start": 0.0, "end": 1.0}], 1, "worker"),
        ([item(0, 0, 0, 1.0, 0.5)], 1, "ends before it starts"),
        (TIMELINE, 4, "not 0..3"),
    ],
)
def test_run_timing_rejects_bad_timelines(timeline, num_blocks, message):
    with pytest.raises(ValueError, match=message):
        run_timing(timeline, 12, num_blocks)


def test_psnr_matches_closed_form():
    a = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    b = np.full_like(a, 10)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    c = a.copy()
    c[0] = 20  # half of the video off by 20: MSE 200
    assert psnr(a, c) == pytest.approx(10 * math.log10(255**2 / 200))
    assert psnr(a, a) == math.inf


def test_psnr_is_symmetric_and_does_not_wrap_around():
    a = np.full((1, 2, 2, 3), 250, dtype=np.uint8)
    b = np.full_like(a, 5)
    assert psnr(a, b) == psnr(b, a) == pytest.approx(10 * math.log10(255**2 / 245**2))


def test_ssim_identical_is_one_and_constant_images_match_closed_form():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    assert ssim(video, video) == pytest.approx(1.0)
    a, b = np.full((1, 12, 12, 3), 100, np.uint8), np.full((1, 12, 12, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_ssim_decreases_with_noise():
    rng = np.random.default_rng(1)
    x = np.linspace(0, 255, 32)
    frame = np.stack(np.broadcast_arrays(x[None, :], x[:, None], np.full((32, 32), 128.0)), axis=-1)
    video = np.repeat(frame[None], 2, axis=0).astype(np.uint8)
    scores = []
    for sigma in (5, 20, 60):
        noisy = np.clip(video + rng.normal(0, sigma, video.shape), 0, 255).astype(np.uint8)
        scores.append(ssim(video, noisy))
    assert 1 > scores[0] > scores[1] > scores[2]
    assert ssim(video, noisy) == pytest.approx(ssim(noisy, video))


def test_quality_metrics_validate_inputs():
    video = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        psnr(video, video[:, :8])
    with pytest.raises(ValueError, match="uint8"):
        ssim(video, video.astype(np.float32))
    with pytest.raises(ValueError, match="at least 11"):
        ssim(video[:, :8, :8], video[:, :8, :8])


def test_mean_ci95():
    mean, lo, hi = mean_ci95([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    mean, lo, hi = mean_ci95([5.0])
    assert mean == 5.0 and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError):
        mean_ci95([])


def test_t_quantile_is_continuous_past_the_table():
    assert t_quantile_975(30) > t_quantile_975(31) > t_quantile_975(1000) > 1.96
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=1e-4)


def test_json_safe():
    figures = {
        "psnr": math.inf,
        "ci": (1.0, math.nan, -math.inf),
        "n": np.int64(3),
        "x": np.float32(0.5),
    }
    safe = json_safe(figures)
    assert safe == {"psnr": "inf", "ci": [1.0, "nan", "-inf"], "n": 3, "x": 0.5}
    json.dumps(safe, allow_nan=False)
    assert float(safe["psnr"]) == math.inf


def test_mcnemar_exact_p_values():
    from cascade.metrics import mcnemar_p

    # 6 pairs right only under the reference, none only under the other: 2 * (1/2)^6
    assert mcnemar_p([True] * 6 + [False] * 4, [False] * 6 + [False] * 4) == pytest.approx(2 / 64)
    assert mcnemar_p([True, False] * 5, [True, False] * 5) == 1.0  # no discordant pair
    # 1 against 3 discordant pairs: 2 * (C(4,0) + C(4,1)) / 16
    assert mcnemar_p([True, False, False, False], [False, True, True, True]) == pytest.approx(10 / 16)
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_p([True], [True, False])

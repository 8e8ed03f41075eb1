import numpy as np
import pytest

from cascade.toy import analyzer, data
from cascade.toy.data import ClipSpec, PromptTarget


def _truth(spec):
    return PromptTarget(spec.colour, spec.shape, spec.motion, spec.background)


def _score_all(clips):
    return analyzer.aggregate([analyzer.score_clip(analyzer.analyze_clip(frames), target)
                               for frames, target in clips])


def _ground_truth_clips(num_frames, n, seed):
    return [(data.render_clip(item.spec, num_frames), _truth(item.spec))
            for item in data.eval_set(n, seed=seed)]


def _box_mean(frames):
    padded = np.pad(frames.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    return sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9


def _box_blur(frames):
    return np.rint(_box_mean(frames)).astype(np.uint8)


def _smooth_noise(seed, passes, std, mean=128.0, num_frames=12):
    """Gaussian noise blurred by ``passes`` 3x3 box filters (~Gaussian blur), rescaled to std."""
    field = np.random.default_rng(seed).normal(0, 1, (num_frames, 64, 64, 3))
    for _ in range(passes):
        field = _box_mean(field)
    field = (field - field.mean()) / field.std() * std + mean
    return np.clip(field, 0, 255).astype(np.uint8)


def _plain_clip(colour=(0, 0, 0), num_frames=12):
    return np.full((num_frames, 64, 64, 3), colour, np.uint8)


NAMED = PromptTarget("red", "circle", "right", "black")
"""A prompt naming every attribute, to check that a clip without an object scores 0 on them."""


def _assert_shows_no_object(frames):
    analysis = analyzer.analyze_clip(frames)
    scores = analyzer.score_clip(analysis, NAMED)
    assert scores["one_object"] <= 0.05, analysis.object_counts
    assert (scores["colour"], scores["shape"], scores["motion"]) == (0.0, 0.0, 0.0), analysis
    return analysis


def _assert_accuracy(summary, threshold):
    for key in ("colour", "shape", "motion", "one_object"):
        assert summary[key]["mean"] >= threshold, (key, summary[key])


@pytest.mark.parametrize("num_frames,seed", [(12, 0), (24, 1)])
def test_ground_truth_eval_clips_score_at_least_98_percent(num_frames, seed):
    clips = _ground_truth_clips(num_frames, 2 * len(data.HELD_OUT_COMBOS), seed)
    summary = _score_all(clips)
    assert summary["clips"] == len(clips)
    _assert_accuracy(summary, 0.98)
    assert summary["background"]["mean"] >= 0.98
    assert summary["flicker"]["mean"] == 0.0


def test_ground_truth_training_clips_score_at_least_98_percent():
    rng = np.random.default_rng(2)
    specs = [data.sample_spec(rng, "train") for _ in range(42)]
    _assert_accuracy(_score_all([(data.render_clip(s, 12), _truth(s)) for s in specs]), 0.98)


def test_mild_noise_still_scores_at_least_95_percent():
    rng = np.random.default_rng(3)
    clips = [(np.clip(frames + rng.normal(0, 8, frames.shape), 0, 255).astype(np.uint8), target)
             for frames, target in _ground_truth_clips(12, len(data.HELD_OUT_COMBOS), seed=3)]
    summary = _score_all(clips)
    _assert_accuracy(summary, 0.95)
    assert 0.0 < summary["flicker"]["mean"] < 0.1


def test_blur_still_scores_at_least_95_percent():
    clips = [(_box_blur(frames), target)
             for frames, target in _ground_truth_clips(12, len(data.HELD_OUT_COMBOS), seed=4)]
    _assert_accuracy(_score_all(clips), 0.95)


def test_prompt_targets_are_judged_through_parse_prompt():
    item = data.eval_set(1, seed=5)[0]
    scores = analyzer.score_clip(analyzer.analyze_clip(data.render_clip(item.spec, 12)),
                                 data.parse_prompt(item.prompt))
    assert (scores["colour"], scores["shape"], scores["motion"]) == (1.0, 1.0, 1.0)


def test_blank_clip_has_no_object():
    analysis = analyzer.analyze_clip(np.zeros((12, 64, 64, 3), np.uint8))
    assert analysis.object_counts == (0,) * 12 and analysis.colour is None
    scores = analyzer.score_clip(analysis, PromptTarget("red", "circle", "left", None))
    assert scores["one_object"] == 0.0
    assert (scores["colour"], scores["shape"], scores["motion"]) == (0.0, 0.0, 0.0)


def test_two_objects_are_counted_as_two():
    first = ClipSpec("red", "circle", "right", "black", 14, 12.0, 15.0)
    second = ClipSpec("blue", "square", "left", "black", 14, 50.0, 48.0)
    a, b = data.render_clip(first, 12), data.render_clip(second, 12)
    both = np.where((b != 0).any(axis=-1, keepdims=True), b, a)
    analysis = analyzer.analyze_clip(both)
    assert analysis.object_counts == (2,) * 12
    assert analyzer.score_clip(analysis, _truth(first))["one_object"] == 0.0


def test_wrong_attributes_score_zero_and_unnamed_ones_none():
    spec = ClipSpec("red", "triangle", "up", "grey", 16, 30.0, 50.0)
    analysis = analyzer.analyze_clip(data.render_clip(spec, 12))
    wrong = analyzer.score_clip(analysis, PromptTarget("blue", "circle", "down", "black"))
    assert (wrong["colour"], wrong["shape"], wrong["motion"], wrong["background"]) == (0.0,) * 4
    unnamed = analyzer.score_clip(analysis, data.parse_prompt("something red"))
    assert unnamed["colour"] == 1.0
    assert unnamed["shape"] is None and unnamed["motion"] is None and unnamed["background"] is None


def test_flicker_is_normalised_background_change():
    alternating = np.zeros((4, 64, 64, 3), np.uint8)
    alternating[1::2] = 255
    assert analyzer.analyze_clip(alternating).flicker == pytest.approx(1.0)
    assert analyzer.analyze_clip(alternating[:1]).flicker == 0.0


def test_connected_components_uses_4_connectivity_per_frame():
    mask = np.zeros((2, 5, 5), bool)
    mask[0, 0, 0:3] = True       # a bar
    mask[0, 1, 3] = True         # touches the bar only diagonally
    mask[0, 3:5, 1:3] = True     # a square
    mask[1, 2, :] = True         # same place in another frame: its own component
    labels = analyzer.connected_components(mask)
    assert (labels[~mask] == -1).all()
    assert len(np.unique(labels[0][mask[0]])) == 3
    assert len(np.unique(labels[1][mask[1]])) == 1
    assert not set(labels[0][mask[0]]) & set(labels[1][mask[1]])


def test_aggregate_means_ignore_none_and_give_wilson_intervals():
    scores = [{"colour": 1.0, "shape": None, "motion": 1.0, "background": None,
               "one_object": 1.0, "flicker": 0.0}] * 8
    scores += [{"colour": 0.0, "shape": None, "motion": 1.0, "background": None,
                "one_object": 0.5, "flicker": 0.1}] * 2
    summary = analyzer.aggregate(scores)
    assert summary["clips"] == 10
    colour = summary["colour"]
    assert colour["mean"] == pytest.approx(0.8) and colour["n"] == 10
    assert colour["low"] == pytest.approx(0.490, abs=1e-3)
    assert colour["high"] == pytest.approx(0.943, abs=1e-3)
    assert summary["shape"] == {"mean": None, "low": None, "high": None, "n": 0}
    assert summary["motion"]["mean"] == 1.0 and summary["motion"]["high"] == 1.0
    assert summary["one_object"]["mean"] == pytest.approx(0.9)
    assert summary["one_object"]["low"] < 0.9 < summary["one_object"]["high"]


@pytest.mark.parametrize("frames", [
    pytest.param(np.random.default_rng(0).integers(0, 256, (24, 64, 64, 3), dtype=np.uint8),
                 id="uniform-noise"),
    pytest.param(np.clip(np.random.default_rng(1).normal(100, 40, (12, 64, 64, 3)), 0, 255)
                 .astype(np.uint8), id="gaussian-noise"),
    pytest.param(_smooth_noise(2, passes=2, std=50), id="blurred-noise"),
    pytest.param(_smooth_noise(3, passes=4, std=25, mean=40), id="faint-blurred-noise"),
])
def test_noise_clips_show_no_object(frames):
    analysis = _assert_shows_no_object(frames)
    assert not any(analysis.plain_background)
    assert analysis.frame_colours == (None,) * len(frames)


def _blob_clip(top, bottom, left, right, colour=(230, 30, 30)):
    frames = _plain_clip()
    frames[:, top:bottom, left:right] = colour
    return frames


@pytest.mark.parametrize("frames", [
    pytest.param(_blob_clip(1, 63, 1, 63), id="near-full-frame"),
    pytest.param(_blob_clip(3, 61, 2, 62, colour=(245, 225, 30)), id="full-frame-inside-margin"),
    pytest.param(_blob_clip(8, 56, 10, 53), id="half-frame-centred"),
    pytest.param(_blob_clip(0, 64, 0, 32), id="left-half"),
])
def test_oversized_blobs_are_not_objects(frames):
    analysis = _assert_shows_no_object(frames)
    assert analysis.object_counts == (0,) * len(frames)


def test_object_sized_ring_and_streak_are_not_objects():
    frames = _plain_clip()
    rows, cols = np.mgrid[:64, :64]
    radius = np.hypot(rows - 20.5, cols - 20.5)
    frames[:, (radius <= 8) & (radius >= 5)] = (30, 200, 50)   # 16 px ring: mostly hole
    frames[:, 48:52, 20:46] = (40, 90, 245)                      # 26 x 4 streak
    analysis = _assert_shows_no_object(frames)
    assert all(analysis.plain_background)


def test_noisy_background_hides_the_object():
    spec = ClipSpec("red", "circle", "right", "black", 16, 20.0, 32.0)
    clean = data.render_clip(spec, 12).astype(np.float64)
    rng = np.random.default_rng(6)
    noisy = np.clip(clean + rng.normal(0, 24, clean.shape), 0, 255).astype(np.uint8)
    analysis = _assert_shows_no_object(noisy)
    assert not any(analysis.plain_background)
    mild = np.clip(clean + rng.normal(0, 8, clean.shape), 0, 255).astype(np.uint8)
    assert all(analyzer.analyze_clip(mild).plain_background)


def test_object_shown_in_too_few_frames_scores_zero():
    spec = ClipSpec("red", "circle", "right", "black", 16, 20.0, 32.0)
    frames = data.render_clip(spec, 12)
    frames[5:] = 0                      # the object is gone from 7 of 12 frames
    analysis = analyzer.analyze_clip(frames)
    assert analysis.frame_colours[:5] == ("red",) * 5 and analysis.colour is None
    scores = analyzer.score_clip(analysis, _truth(spec))
    assert (scores["colour"], scores["shape"], scores["motion"]) == (0.0, 0.0, 0.0)
    assert scores["one_object"] == pytest.approx(5 / 12)
    frames = data.render_clip(spec, 12)
    frames[6:] = 0                      # half the frames still show it
    half = analyzer.score_clip(analyzer.analyze_clip(frames), _truth(spec))
    assert (half["colour"], half["shape"], half["motion"]) == (1.0, 1.0, 1.0)
    assert half["one_object"] == 0.5

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


def _box_blur(frames):
    padded = np.pad(frames.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    total = sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
    return np.rint(total / 9).astype(np.uint8)


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

import itertools

import numpy as np
import pytest

from cascade.toy import data
from cascade.toy.data import ClipSpec, PromptTarget


def _specs(split, n, seed=0):
    rng = np.random.default_rng(seed)
    return [data.sample_spec(rng, split) for _ in range(n)]


def test_render_is_deterministic_uint8_rgb():
    spec = _specs("train", 1)[0]
    frames = data.render_clip(spec, 12)
    assert frames.shape == (12, 64, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, data.render_clip(spec, 12))
    assert data.render_clip(spec, 6, size=32).shape == (6, 32, 32, 3)


def test_render_shows_one_object_of_spec_colour_on_spec_background():
    spec = ClipSpec("red", "square", "still", "navy", size_px=16, x0=32.0, y0=32.0)
    frame = data.render_clip(spec, 1)[0]
    colours = {tuple(c) for c in frame.reshape(-1, 3)}
    assert colours == {data.COLOURS["red"], data.BACKGROUNDS["navy"]}
    assert (frame == data.COLOURS["red"]).all(axis=-1).sum() == 16 * 16


@pytest.mark.parametrize("split", ["train", "eval"])
def test_object_stays_inside_and_visible_for_48_frames(split):
    for spec in _specs(split, 60, seed=1):
        frames = data.render_clip(spec, 48)
        background = np.array(data.BACKGROUNDS[spec.background], np.uint8)
        is_object = (frames != background).any(axis=-1)
        inner = is_object[:, 2:-2, 2:-2]
        assert inner.sum() == is_object.sum(), spec  # nothing within 2 px of the edge
        assert is_object.sum(axis=(1, 2)).min() >= 40, spec


def test_every_motion_is_visible_within_12_frames():
    for spec in _specs("train", 200, seed=2):
        path = data.centre_path(spec, 12)
        travel = path.max(axis=0) - path.min(axis=0)
        if spec.motion == "still":
            assert travel.max() == 0
        else:
            assert travel.max() >= 10, spec


def test_required_attributes_and_words_are_covered():
    assert {"red", "green", "blue", "yellow"} <= set(data.COLOURS) and len(data.COLOURS) >= 6
    assert {"circle", "square", "triangle"} <= set(data.SHAPES)
    assert {"left", "right", "up", "down", "bouncing", "circling"} <= set(data.MOTIONS)
    assert len(data.BACKGROUNDS) >= 3
    vocabulary = set(data.training_vocabulary())
    assert {"red", "ball", "box", "leftward", "bouncing", "circling", "background"} <= vocabulary
    assert data.training_vocabulary() == sorted(vocabulary)


def test_backgrounds_contrast_with_every_object_colour():
    for colour, background in itertools.product(data.COLOURS.values(), data.BACKGROUNDS.values()):
        assert np.linalg.norm(np.subtract(colour, background)) >= 130


def test_training_sampling_never_produces_held_out_combinations():
    combos = {(s.colour, s.shape, s.motion) for s in _specs("train", 3000, seed=3)}
    assert not combos & data.HELD_OUT_COMBOS
    assert len(combos) == len(data.TRAIN_COMBOS)  # and it reaches every training combination
    assert {(s.colour, s.shape, s.motion) for s in _specs("eval", 300)} <= data.HELD_OUT_COMBOS


def test_held_out_combinations_leave_every_attribute_in_training():
    for index, values in enumerate((data.COLOURS, data.SHAPES, data.MOTIONS)):
        assert {combo[index] for combo in data.TRAIN_COMBOS} == set(values)


def test_training_captions_use_exactly_the_training_vocabulary():
    rng = np.random.default_rng(4)
    seen = set()
    for spec in _specs("train", 3000, seed=5):
        seen.update(data.words(data.caption(spec, data.sample_phrasing(rng, "train"), rng)))
    assert seen == set(data.training_vocabulary())


def test_held_out_phrasings_are_new_but_use_only_training_words():
    vocabulary = set(data.training_vocabulary())
    rng = np.random.default_rng(6)
    for spec in _specs("eval", 300, seed=7):
        assert set(data.words(data.caption(spec, data.sample_phrasing(rng, "eval"), rng))) <= vocabulary
        train = {data.caption(spec, p) for p in data.TRAIN_PHRASINGS}
        held_out = {data.caption(spec, p) for p in data.EVAL_PHRASINGS}
        assert not train & held_out
    assert set(data.TRAIN_PHRASINGS).isdisjoint(data.EVAL_PHRASINGS)
    assert len(data.TRAIN_PHRASINGS) + len(data.EVAL_PHRASINGS) == data.NUM_PHRASINGS


def test_parse_prompt_round_trips_every_phrasing_and_synonym():
    rng = np.random.default_rng(8)
    for colour, shape, motion, background in itertools.product(
            data.COLOURS, data.SHAPES, data.MOTIONS, data.BACKGROUNDS):
        spec = ClipSpec(colour, shape, motion, background, 14, 32.0, 32.0)
        for phrasing in range(data.NUM_PHRASINGS):
            names_background = "{b}" in data.TEMPLATES[phrasing]
            expected = PromptTarget(colour, shape, motion, background if names_background else None)
            for choice in (None, rng, rng):
                text = data.caption(spec, phrasing, choice)
                assert data.parse_prompt(text) == expected, text


def test_parse_prompt_reads_free_text():
    cases = {
        "A golden BALL, bouncing!": ("yellow", "circle", "bouncing", None),
        "blue square moving in a circle": ("blue", "square", "circling", None),
        "a box going up and down on gray": (None, "square", "bouncing", "grey"),
        "a cat": (None, None, None, None),
    }
    for text, expected in cases.items():
        assert data.parse_prompt(text) == PromptTarget(*expected), text


def test_eval_set_is_deterministic_balanced_and_held_out():
    items = data.eval_set(2 * len(data.HELD_OUT_COMBOS), seed=0)
    assert items == data.eval_set(len(items), seed=0)
    assert items != data.eval_set(len(items), seed=1)
    combos = [(i.spec.colour, i.spec.shape, i.spec.motion) for i in items]
    assert all(combos.count(c) == 2 for c in data.HELD_OUT_COMBOS)
    for attribute, values in (("colour", data.COLOURS), ("shape", data.SHAPES),
                              ("motion", data.MOTIONS), ("background", data.BACKGROUNDS)):
        assert {getattr(i.spec, attribute) for i in items} == set(values)
    for item in items:
        target = data.parse_prompt(item.prompt)
        assert (target.colour, target.shape, target.motion) == (
            item.spec.colour, item.spec.shape, item.spec.motion)
        assert target.background in (None, item.spec.background)
    assert len({i.seed for i in items}) == len(items)


def test_training_clip_shapes_determinism_and_one_caption_per_block():
    frames, captions = data.training_clip(np.random.default_rng(9), 2, size=32)
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
    assert len(captions) == 2 and captions[0] == captions[1] and isinstance(captions[0], str) and captions[0]
    again, captions_again = data.training_clip(np.random.default_rng(9), 2, size=32)
    np.testing.assert_array_equal(frames, again)
    assert captions == captions_again


def _object_pixels(frames: np.ndarray) -> np.ndarray:
    return (frames != frames[0, 0, 0]).any(axis=-1)  # the border is always background


def test_a_switch_clip_changes_one_attribute_at_its_block_and_captions_each_block():
    rng = np.random.default_rng(4)
    changed = set()
    for _ in range(150):
        switch = int(rng.integers(1, 8))
        frames, captions = data.training_clip(rng, 8, 3, switch_block=switch)
        before, after = data.parse_prompt(captions[0]), data.parse_prompt(captions[-1])
        assert captions[:switch] == [captions[0]] * switch and captions[switch:] == [captions[-1]] * (8 - switch)
        differ = [name for name in ("colour", "shape", "motion") if getattr(before, name) != getattr(after, name)]
        assert len(differ) == 1 and before.background == after.background, captions
        changed.add(differ[0])
        assert (after.colour, after.shape, after.motion) not in data.HELD_OUT_COMBOS
        is_object = _object_pixels(frames)
        assert is_object.sum(axis=(1, 2)).min() >= 40 and not is_object[:, :2].any() and not is_object[:, -2:].any()
        for frame, colour in ((switch - 1) * 3 + 2, before.colour), (switch * 3, after.colour):
            assert (frames[frame][is_object[frame]] == data.COLOURS[colour]).all()
    assert changed == {"colour", "shape", "motion"}


def test_every_motion_can_start_from_where_another_left_the_object():
    """Each new motion begins exactly at the object's position (no jump), inside the frame."""
    rng = np.random.default_rng(5)
    for spec in _specs("train", 60, seed=6):
        after = data.switched_spec(rng, spec, 9)
        np.testing.assert_allclose(data.centre_path(after, 1)[0], data.centre_path(spec, 10)[9], atol=1e-6)
        now = data.spec_at_frame(spec, 9)
        np.testing.assert_allclose(data.centre_path(now, 1)[0], data.centre_path(spec, 10)[9], atol=1e-9)
        x, y = data.centre_path(now, 1)[0]
        for motion in data.MOTIONS:
            moved = data._moving_from(rng, now, motion, float(x), float(y))
            if moved is None:
                assert motion == "circling"
                continue
            np.testing.assert_allclose(data.centre_path(moved, 1)[0], (x, y), atol=1e-6)
            inner = _object_pixels(data.render_clip(moved, 24))
            assert inner.sum(axis=(1, 2)).min() >= 40 and not inner[:, :, :2].any() and not inner[:, :, -2:].any()


def test_a_switch_outside_the_clip_is_an_error():
    with pytest.raises(ValueError, match="switch_block must be inside the clip's 4 blocks, not at 4"):
        data.training_clip(np.random.default_rng(0), 4, switch_block=4)


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError):
        ClipSpec("black", "circle", "left", "navy", 14, 32.0, 32.0)
    with pytest.raises(ValueError):
        data.sample_spec(np.random.default_rng(0), "test")

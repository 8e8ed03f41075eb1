"""Automatic judge of tiny-shapes clips: does a clip show what its prompt asked for?

The analyzer segments a clip (plain background, coloured objects), describes it (object count,
colour, shape and motion of the main object, temporal flicker) and scores the description against
a :class:`~cascade.toy.data.PromptTarget`. It must cope with generated clips, which can be noisy,
blurry or blocky, so every decision is a vote or a threshold with slack rather than an exact match.

Lengths are measured in reference pixels (see ``data.REFERENCE_SIZE``) so the thresholds mean the
same at every frame size.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from cascade.toy.data import (BACKGROUNDS, COLOURS, REFERENCE_SIZE, SHAPES, SIZE_RANGE_PX,
                              PromptTarget, parse_prompt, shape_inside)

FOREGROUND_DISTANCE = 60.0
"""RGB distance (0..255 scale) from the background above which a pixel is foreground. Object
colours lie >= 130 from every background, pixel noise of sigma 8 adds ~14."""
MIN_OBJECT_AREA_PX = 20.0
"""Components smaller than this (reference px^2) are specks, not objects; the smallest object,
a 12 px triangle, covers ~70."""
MAX_OBJECT_AREA_PX = 2.5 * SIZE_RANGE_PX[1] ** 2
"""Components larger than this (reference px^2, 810) are not objects: the largest object, an 18 px
square, covers 324, and 3x3 blur grows its mask to <= 400. A full-frame noise blob or a blob over
half the frame (2048) is far above."""
MAX_OBJECT_SIDE_PX = 1.6 * SIZE_RANGE_PX[1]
"""Longest bounding-box side (reference px, ~29) of an object: objects span 12-18 px, <= 22
blurred."""
MAX_OBJECT_ASPECT = 2.0
"""Every shape fills a square box; a component much longer than wide is a streak, not an object."""
MIN_OBJECT_FILL = 0.35
"""Least share of its bounding box an object covers: a triangle covers ~0.5, a circle ~0.79."""
MAX_OBJECT_HOLES = 0.1
"""Most of an object's filled outline that may be holes: objects are solid (holes 0 with sigma-8
noise), chance blobs of noisy frames are riddled with them."""
HALO_PX = 1.0
"""Ring around each object (reference px) left out of the background plainness check: blur mixes
an object's edge into the pixels next to it."""
BACKGROUND_TOLERANCE = 0.6 * FOREGROUND_DISTANCE
"""RGB distance (36) from the background colour within which a pixel counts as plain background."""
MIN_PLAIN_SHARE = 0.9
"""Share of a frame's background (everything but its objects and their halo) that must be plain for
the frame to count as showing objects at all. Pixel noise of sigma 8 leaves >99.9% of background
pixels within BACKGROUND_TOLERANCE, sigma 14 ~91%; noise strong enough to push pixels past
FOREGROUND_DISTANCE by chance (sigma >= 16: ~83%, uniform noise ~3%) fails, so blobs of noise never
count as objects."""
MIN_SHOWN_SHARE = 0.5
"""Least share of frames that must show a valid object for the clip to have a colour, shape and
motion at all; below it the clip failed to show one and those attributes are None."""
CORE_LEVEL = 0.8
"""Share of an object's contrast above which its pixels show its true colour (see
_describe_object)."""
SHAPE_GRID = 16
"""Side of the grid on which an object's mask is compared with the shape templates."""
STILL_RANGE_PX = 3.0
"""Centroid travel below which the object counts as still; linear motions travel ~11 px in 12
frames."""
CIRCLE_AXIS_RATIO = 0.3
"""Circling moves both axes comparably (>= 0.43 of each other over half a revolution); linear
motions and bouncing move one axis only."""
BOUNCE_RETURN_RATIO = 0.25
"""Vertical motion is a bounce when it travels both up and down by at least this share of its
range (a rise or fall goes one way only; any 12-frame window of a bounce goes >= 0.38 both ways)."""
ENDPOINT_FRAMES = 3
"""Frames averaged at each end of the trajectory to measure net displacement robustly."""

ACCURACY_KEYS = ("colour", "shape", "motion", "background")
MEAN_KEYS = ("one_object", "flicker")


@dataclass(frozen=True)
class ClipAnalysis:
    """What the analyzer sees in a clip.

    A frame shows objects only when its background is plain (``plain_background``: at least
    MIN_PLAIN_SHARE of the pixels outside its objects lie within BACKGROUND_TOLERANCE of the
    background colour). An object is a connected foreground component of object size and form
    (area between MIN_OBJECT_AREA_PX and MAX_OBJECT_AREA_PX, bounding box at most
    MAX_OBJECT_SIDE_PX and MAX_OBJECT_ASPECT, filling at least MIN_OBJECT_FILL of it, with at most
    MAX_OBJECT_HOLES holes); anything else in the background makes it less plain.

    ``background`` is the background colour name nearest to the median frame border.
    ``colour``, ``shape`` and ``motion`` describe the main (largest) object, voted over the frames
    that show one; None when fewer than MIN_SHOWN_SHARE of the frames show an object.
    ``object_counts`` are the objects per frame (0 where the background is not plain);
    ``frame_colours``, ``frame_shapes`` and ``centroids`` ((x, y) pixels) describe each frame's main
    object, None where the frame shows none. ``one_object`` is the share of frames with exactly one
    object.
    ``flicker`` is the mean absolute change, per channel and normalised to [0, 1] by 255, between
    consecutive frames over the pixels that are background in both (0 for a static background,
    averaged over frame pairs; 0 for a single frame).
    """

    background: str
    colour: str | None
    shape: str | None
    motion: str | None
    object_counts: tuple[int, ...]
    frame_colours: tuple[str | None, ...]
    frame_shapes: tuple[str | None, ...]
    centroids: tuple[tuple[float, float] | None, ...]
    one_object: float
    flicker: float
    plain_background: tuple[bool, ...]


# ----------------------------------------------------------------------------- segmentation

def _border_background(frames: np.ndarray) -> np.ndarray:
    """Per-frame background colour, float [T, 3]: median of the one-pixel frame border.

    Objects keep a margin from the edge, and a median ignores the few border pixels a stray blob
    might cover.
    """
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]],
                            axis=1)
    return np.median(border.astype(np.float64), axis=1)


def _nearest(rgb: np.ndarray, table: dict[str, tuple[int, int, int]]) -> str:
    """Name of the table colour closest to ``rgb`` (Euclidean RGB distance)."""
    names = list(table)
    distances = np.linalg.norm(np.asarray([table[n] for n in names], float) - rgb, axis=1)
    return names[int(np.argmin(distances))]


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Label 4-connected components of each frame of a bool mask [T, H, W].

    Returns int labels of the same shape, -1 on background; a component's label is the flat
    index of its first pixel, so labels are unique across frames. Works by propagating the
    minimum label to neighbours, with pointer jumping (label <- label of label) so that it
    converges in a few dozen vectorised passes instead of one pass per pixel of path length.
    """
    sentinel = mask.size
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape), sentinel)
    while True:
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=sentinel)
        neighbourhood = np.minimum.reduce([
            padded[:, 1:-1, 1:-1], padded[:, :-2, 1:-1], padded[:, 2:, 1:-1],
            padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]])
        updated = np.where(mask, neighbourhood, sentinel)
        flat = updated.reshape(-1)
        foreground = flat < sentinel
        flat[foreground] = flat[flat[foreground]]
        if np.array_equal(updated, labels):
            return np.where(mask, labels, -1)
        labels = updated


# ----------------------------------------------------------------------------- per-object features

def _shape_templates() -> np.ndarray:
    """Every shape drawn to fill a SHAPE_GRID square, float [len(SHAPES), G, G]."""
    cells = (np.arange(SHAPE_GRID) + 0.5) / SHAPE_GRID * 2.0 - 1.0
    u, v = np.meshgrid(cells, cells)
    return np.stack([shape_inside(shape, u, v) for shape in SHAPES]).astype(np.float64)


_TEMPLATES = _shape_templates()


def classify_shape(mask: np.ndarray) -> str:
    """Shape of one object given its bool mask [H, W].

    The mask is cropped to its bounding box and sampled on a SHAPE_GRID grid, then compared
    with each shape drawn to fill the same box; the closest template (least mismatched area)
    wins. Normalising to the box makes it independent of size and tolerant of blur, which grows
    the box but keeps the outline's proportions.
    """
    rows, cols = np.nonzero(mask)
    top, height = rows.min(), rows.max() - rows.min() + 1
    left, width = cols.min(), cols.max() - cols.min() + 1
    cells = (np.arange(SHAPE_GRID) + 0.5) / SHAPE_GRID
    sampled = mask[np.ix_(top + (cells * height).astype(int), left + (cells * width).astype(int))]
    mismatch = np.abs(sampled[None] - _TEMPLATES).mean(axis=(1, 2))
    return SHAPES[int(np.argmin(mismatch))]


def classify_motion(centroids: np.ndarray, frame_size: int) -> str | None:
    """Motion label from a centroid trajectory [T, 2] of (x, y) pixels (NaN rows are skipped).

    In reference pixels: barely moving -> still; both axes sweeping comparable ranges ->
    circling (an orbit moves x and y together, every other motion moves one axis); otherwise the
    dominant axis decides: horizontal -> left/right by net displacement; vertical -> bouncing when
    it travels a good part of its range both up and down, else up/down by net displacement.
    None with fewer than two located frames.
    """
    points = centroids[~np.isnan(centroids).any(axis=1)] * (REFERENCE_SIZE / frame_size)
    if len(points) < 2:
        return None
    k = max(1, min(ENDPOINT_FRAMES, len(points) // 4))
    net = points[-k:].mean(axis=0) - points[:k].mean(axis=0)
    x_range, y_range = points.max(axis=0) - points.min(axis=0)
    if max(x_range, y_range) < STILL_RANGE_PX:
        return "still"
    if min(x_range, y_range) >= max(STILL_RANGE_PX, CIRCLE_AXIS_RATIO * max(x_range, y_range)):
        return "circling"
    if x_range >= y_range:
        return "right" if net[0] > 0 else "left"
    y = points[:, 1]
    down_travel = np.max(y - np.minimum.accumulate(y))
    up_travel = np.max(np.maximum.accumulate(y) - y)
    if min(down_travel, up_travel) >= BOUNCE_RETURN_RATIO * y_range:
        return "bouncing"
    return "down" if net[1] > 0 else "up"


def _majority(values) -> str | None:
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _flicker(frames: np.ndarray, foreground: np.ndarray) -> float:
    """See ClipAnalysis.flicker."""
    change = np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=-1) / 255.0
    both_background = ~foreground[:-1] & ~foreground[1:]
    pixels = both_background.sum(axis=(1, 2))
    if not pixels.any():
        return 0.0
    per_pair = (change * both_background).sum(axis=(1, 2))[pixels > 0] / pixels[pixels > 0]
    return float(per_pair.mean())


def _describe_object(frame: np.ndarray, distance: np.ndarray,
                     mask: np.ndarray) -> tuple[str, str, tuple[float, float]]:
    """Colour name, shape and (x, y) centroid of one object.

    ``distance`` is each pixel's colour distance from the background. Blur blends an object's
    edge into the background, which dims its colour and swells its mask, so the colour is read
    from the core (pixels at >= CORE_LEVEL of the object's contrast) and the shape from the
    half-contrast outline, where a blurred edge still sits.
    """
    contrast = np.percentile(distance[mask], 90)
    core = mask & (distance >= CORE_LEVEL * contrast)
    outline = mask & (distance >= 0.5 * contrast)
    colour = _nearest(np.median(frame[core].astype(np.float64), axis=0), COLOURS)
    rows, cols = np.nonzero(mask)
    return colour, classify_shape(outline), (float(cols.mean() + 0.5), float(rows.mean() + 0.5))


# ----------------------------------------------------------------------------- analysis

def _hole_shares(labels: np.ndarray, ids: np.ndarray, frame_of: np.ndarray, top: np.ndarray,
                 left: np.ndarray, heights: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Share of each component's filled outline that is holes, float [N].

    Each component is cut out of its bounding box onto a canvas with a free margin; whatever of
    the rest is not 4-connected to the margin is enclosed by the component, i.e. a hole. All
    canvases are labelled in one connected_components call.
    """
    if len(ids) == 0:
        return np.zeros(0)
    side = int(max(heights.max(), widths.max())) + 2
    canvas = np.zeros((len(ids), side, side), bool)
    for n, (t, r, c, h, w) in enumerate(zip(frame_of, top, left, heights, widths)):
        canvas[n, 1:h + 1, 1:w + 1] = labels[t, r:r + h, c:c + w] == ids[n]
    gaps = connected_components(~canvas)
    holes = ~canvas & (gaps != gaps[:, :1, :1])
    hole_area = holes.sum(axis=(1, 2))
    return hole_area / (canvas.sum(axis=(1, 2)) + hole_area)


def _valid_objects(labels: np.ndarray, foreground: np.ndarray,
                   scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components that look like objects: (ids, areas, frame index), each [N].

    ``scale`` is pixels per reference pixel along (y, x). See ClipAnalysis for the criteria.
    """
    _, height, width = labels.shape
    ids, inverse, areas = np.unique(labels[foreground], return_inverse=True, return_counts=True)
    _, rows, cols = np.nonzero(foreground)  # same (C) order as labels[foreground]
    frame_of = ids // (height * width)
    top = (ids % (height * width)) // width  # a label is the flat index of its first pixel
    bottom = np.zeros_like(ids)
    left = np.full_like(ids, width)
    right = np.zeros_like(ids)
    np.maximum.at(bottom, inverse, rows)
    np.minimum.at(left, inverse, cols)
    np.maximum.at(right, inverse, cols)
    heights, widths = bottom - top + 1, right - left + 1
    area_scale = scale[0] * scale[1]
    ok = ((areas >= MIN_OBJECT_AREA_PX * area_scale) & (areas <= MAX_OBJECT_AREA_PX * area_scale)
          & (heights <= MAX_OBJECT_SIDE_PX * scale[0]) & (widths <= MAX_OBJECT_SIDE_PX * scale[1])
          & (np.maximum(heights / scale[0], widths / scale[1])
             <= MAX_OBJECT_ASPECT * np.minimum(heights / scale[0], widths / scale[1]))
          & (areas >= MIN_OBJECT_FILL * heights * widths))
    holes = _hole_shares(labels, ids[ok], frame_of[ok], top[ok], left[ok], heights[ok], widths[ok])
    ok[ok] = holes <= MAX_OBJECT_HOLES
    return ids[ok], areas[ok], frame_of[ok]


def _plain_background(distance: np.ndarray, objects: np.ndarray,
                      scale: tuple[float, float]) -> np.ndarray:
    """Per frame, bool [T]: whether the pixels outside ``objects`` (and their halo) are plain."""
    ry, rx = (max(1, round(HALO_PX * s)) for s in scale)
    padded = np.pad(objects, ((0, 0), (ry, ry), (rx, rx)))
    _, height, width = objects.shape
    halo = np.zeros_like(objects)
    for dy in range(2 * ry + 1):
        for dx in range(2 * rx + 1):
            halo |= padded[:, dy:dy + height, dx:dx + width]
    rest = ~halo
    plain = (rest & (distance <= BACKGROUND_TOLERANCE)).sum(axis=(1, 2))
    return plain >= MIN_PLAIN_SHARE * rest.sum(axis=(1, 2))


def analyze_clip(frames: np.ndarray) -> ClipAnalysis:
    """Describe a clip, uint8 RGB [T, H, W, 3] (see ClipAnalysis)."""
    num_frames, height, width, _ = frames.shape
    scale = (height / REFERENCE_SIZE, width / REFERENCE_SIZE)
    background = _border_background(frames)
    distance = np.linalg.norm(frames.astype(np.float64) - background[:, None, None, :], axis=-1)
    foreground = distance > FOREGROUND_DISTANCE
    labels = connected_components(foreground)
    ids, areas, frame_of = _valid_objects(labels, foreground, scale)
    plain = _plain_background(distance, np.isin(labels, ids), scale)

    counts, descriptions = [], []
    for t in range(num_frames):
        in_frame = (frame_of == t) & plain[t]
        counts.append(int(in_frame.sum()))
        if in_frame.any():
            main = labels[t] == ids[in_frame][np.argmax(areas[in_frame])]
            descriptions.append(_describe_object(frames[t], distance[t], main))
        else:
            descriptions.append((None, None, None))
    colours, shapes, centroids = zip(*descriptions)
    shown = np.mean([c is not None for c in centroids]) >= MIN_SHOWN_SHARE
    trajectory = np.array([c if c is not None else (np.nan, np.nan) for c in centroids], float)
    return ClipAnalysis(
        background=_nearest(np.median(background, axis=0), BACKGROUNDS),
        colour=_majority(colours) if shown else None,
        shape=_majority(shapes) if shown else None,
        motion=classify_motion(trajectory, width) if shown else None,
        object_counts=tuple(counts),
        frame_colours=colours,
        frame_shapes=shapes,
        centroids=centroids,
        one_object=float(np.mean([c == 1 for c in counts])),
        flicker=_flicker(frames, foreground),
        plain_background=tuple(bool(p) for p in plain),
    )


def score_clip(analysis: ClipAnalysis, target: PromptTarget) -> dict:
    """Score an analysed clip against its prompt.

    ``colour``, ``shape``, ``motion``, ``background``: 1.0 when the clip shows what the prompt
    names, 0.0 when not, None when the prompt does not name that attribute. ``one_object``: share
    of frames with exactly one object. ``flicker``: see ClipAnalysis.
    """
    scores = {}
    for key in ACCURACY_KEYS:
        wanted = getattr(target, key)
        scores[key] = None if wanted is None else float(getattr(analysis, key) == wanted)
    scores["one_object"] = analysis.one_object
    scores["flicker"] = analysis.flicker
    return scores


def judge(frames: np.ndarray, prompt: str) -> dict:
    """The shapes world's verdict on a generated clip against its prompt (``score_clip`` scores)."""
    return score_clip(analyze_clip(frames), parse_prompt(prompt))


def _wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    centre = (successes + z * z / 2) / (n + z * z)
    half = z * math.sqrt(successes * (n - successes) / n + z * z / 4) / (n + z * z)
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal(values: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    half = z * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return max(0.0, values.mean() - half), min(1.0, values.mean() + half)


def aggregate(scores: list[dict]) -> dict:
    """Summarise score_clip results over many clips.

    Returns ``{"clips": N, key: {"mean", "low", "high", "n"}}`` for every score key, ignoring
    None (``n`` counts the clips that scored that key). ``low``/``high`` bound a 95% interval:
    Wilson score interval for the 0/1 accuracies (sound near 0 and 1 and for small n), normal
    approximation of the mean for ``one_object`` and ``flicker``. All None when n is 0.
    """
    summary: dict = {"clips": len(scores)}
    for key in ACCURACY_KEYS + MEAN_KEYS:
        values = np.array([s[key] for s in scores if s.get(key) is not None], float)
        if len(values) == 0:
            summary[key] = {"mean": None, "low": None, "high": None, "n": 0}
            continue
        low, high = (_wilson(values.sum(), len(values)) if key in ACCURACY_KEYS
                     else _normal(values))
        summary[key] = {"mean": float(values.mean()), "low": float(low), "high": float(high),
                        "n": len(values)}
    return summary

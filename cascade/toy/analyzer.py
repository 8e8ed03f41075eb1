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

from cascade.toy.data import (BACKGROUNDS, COLOURS, REFERENCE_SIZE, SHAPES, PromptTarget,
                              shape_inside)

FOREGROUND_DISTANCE = 60.0
"""RGB distance (0..255 scale) from the background above which a pixel is foreground. Object
colours lie >= 130 from every background, pixel noise of sigma 8 adds ~14."""
MIN_OBJECT_AREA_PX = 20.0
"""Components smaller than this (reference px^2) are specks, not objects; the smallest object,
a 12 px triangle, covers ~70."""
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

    ``background`` is the background colour name nearest to the median frame border.
    ``colour``, ``shape`` and ``motion`` describe the main (largest) object, voted over frames;
    None when no frame has an object. ``centroids`` are (x, y) pixel positions per frame, None
    where the frame has no object. ``one_object`` is the share of frames with exactly one object.
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

def analyze_clip(frames: np.ndarray) -> ClipAnalysis:
    """Describe a clip, uint8 RGB [T, H, W, 3] (see ClipAnalysis)."""
    num_frames, height, width, _ = frames.shape
    background = _border_background(frames)
    distance = np.linalg.norm(frames.astype(np.float64) - background[:, None, None, :], axis=-1)
    foreground = distance > FOREGROUND_DISTANCE
    labels = connected_components(foreground)
    min_area = MIN_OBJECT_AREA_PX * (width / REFERENCE_SIZE) * (height / REFERENCE_SIZE)

    ids, areas = np.unique(labels[foreground], return_counts=True)
    keep = areas >= min_area
    ids, areas = ids[keep], areas[keep]
    frame_of = ids // (height * width)

    counts, descriptions = [], []
    for t in range(num_frames):
        in_frame = frame_of == t
        counts.append(int(in_frame.sum()))
        if in_frame.any():
            main = labels[t] == ids[in_frame][np.argmax(areas[in_frame])]
            descriptions.append(_describe_object(frames[t], distance[t], main))
        else:
            descriptions.append((None, None, None))
    colours, shapes, centroids = zip(*descriptions)
    trajectory = np.array([c if c is not None else (np.nan, np.nan) for c in centroids], float)
    return ClipAnalysis(
        background=_nearest(np.median(background, axis=0), BACKGROUNDS),
        colour=_majority(colours),
        shape=_majority(shapes),
        motion=classify_motion(trajectory, width),
        object_counts=tuple(counts),
        frame_colours=colours,
        frame_shapes=shapes,
        centroids=centroids,
        one_object=float(np.mean([c == 1 for c in counts])),
        flicker=_flicker(frames, foreground),
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

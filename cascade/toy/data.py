"""Procedural "tiny-shapes" clips and their captions.

Every clip shows one coloured shape moving on a plain background. A clip is fully determined by a
:class:`ClipSpec`, so the same parameters that render a clip also caption it, and the analyzer
(:mod:`cascade.toy.analyzer`) can check a generated clip against what its prompt asked for.

Geometry is defined on a 64x64 *reference* canvas (positions and sizes in reference pixels, y
pointing down) and scaled to the requested frame size, so one spec renders at any resolution.

Evaluation is held out along two axes so that it measures generalisation, not recall:

* some (colour, shape, motion) combinations never occur in training (every colour, shape and
  motion still occurs in training, only the combination is new);
* some phrasing templates occur only in evaluation. They reorder words that the training
  captions already use, because the bundled model's word-level tokenizer knows only those words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

WORLD = "shapes"
"""This world's name, as a model folder trained on it gives it (model.json "world"): ``cascade.worlds``
finds its judge by it."""

REFERENCE_SIZE = 64
"""Side of the canvas on which ClipSpec geometry is expressed, in pixels."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 90, 245),
    "yellow": (245, 225, 30),
    "orange": (255, 135, 0),
    "purple": (170, 60, 230),
    "cyan": (30, 215, 225),
    "white": (240, 240, 240),
}
"""Object colours. Pairwise RGB distance >= 95, distance to every background >= 130."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "grey": (80, 80, 80),
    "navy": (10, 20, 80),
    "brown": (90, 50, 10),
}
"""Background colours: dark, so that every object colour stands out for segmentation."""

SHAPES = ("circle", "square", "triangle")
MOTIONS = ("left", "right", "up", "down", "bouncing", "circling", "still")

# Synonym tables. Captions draw from them and parse_prompt reads them back, so every word a
# caption can contain maps to exactly one attribute value. Object colour words and background
# words are disjoint, which is what lets a prompt name both.
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet"),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow", "golden"),
    "orange": ("orange",),
    "purple": ("purple", "violet"),
    "cyan": ("cyan", "turquoise"),
    "white": ("white",),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black",),
    "grey": ("grey", "gray"),
    "navy": ("navy",),
    "brown": ("brown",),
}
MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("moving left", "drifting to the left", "sliding leftward", "going left"),
    "right": ("moving right", "drifting to the right", "sliding rightward", "going right"),
    "up": ("moving up", "rising", "floating upward", "going up"),
    "down": ("moving down", "falling", "sinking downward", "going down"),
    "bouncing": ("bouncing", "bouncing up and down", "hopping"),
    "circling": ("circling", "going in circles", "circling around", "orbiting"),
    "still": ("staying still", "standing still", "not moving", "resting"),
}
"""Verb phrases used in captions; each reads after "is" as well as on its own."""

MOTION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "bouncing": ("up and down", "bouncing", "hopping"),
    "circling": ("in circles", "in a circle", "circling", "orbiting"),
    "still": ("not moving", "still", "resting"),
    "left": ("left", "leftward"),
    "right": ("right", "rightward"),
    "up": ("up", "upward", "rising"),
    "down": ("down", "downward", "falling", "sinking"),
}
"""Words and phrases that identify a motion in free text. Multi-word phrases are matched before
single words, so "up and down" means bouncing and "in a circle" is not read as a shape."""

TEMPLATES = (
    # training phrasings
    "a {c} {s} {m}",
    "{c} {s} {m}",
    "a {s} of {c} {m}",
    "the {c} {s} is {m}",
    "a {c} {s} {m} on a {b} background",
    "{b} background with a {c} {s} {m}",
    # evaluation-only phrasings: new orders of training words
    "the {s} is {c} and {m}",
    "on a {b} background, a {c} {s} {m}",
    "a {c} {s} is {m} on a {b} background",
)
"""Caption templates: {c} colour, {s} shape, {m} motion phrase, {b} background word."""

NUM_PHRASINGS = len(TEMPLATES)
TRAIN_PHRASINGS = tuple(range(6))
EVAL_PHRASINGS = tuple(range(6, NUM_PHRASINGS))

HELD_OUT_COMBOS: frozenset[tuple[str, str, str]] = frozenset(
    (colour, shape, motion)
    for ci, colour in enumerate(COLOURS)
    for si, shape in enumerate(SHAPES)
    for mi, motion in enumerate(MOTIONS)
    if (ci + 2 * si + 3 * mi) % len(COLOURS) == 0
)
"""(colour, shape, motion) triples seen only in evaluation.

The rule holds out exactly one colour for every (shape, motion) pair, and at most one motion for
every (colour, shape) and at most one shape for every (colour, motion) pair, so training still
shows every pairwise combination."""

TRAIN_COMBOS = tuple(
    (colour, shape, motion)
    for colour in COLOURS
    for shape in SHAPES
    for motion in MOTIONS
    if (colour, shape, motion) not in HELD_OUT_COMBOS
)

SIZE_RANGE_PX = (12, 18)
MARGIN_PX = 2.0
"""Gap kept between the object and the frame edge (reference px): the border stays background."""
LINEAR_SPEED_PX = 1.0
"""Linear motions move one reference pixel per frame: visible in 12 frames, inside for 48."""
LINEAR_START_SPREAD_PX = 6.0
BOUNCE_PERIOD = 12
"""Frames per bounce: a 12-frame clip shows one full bounce."""
BOUNCE_HEIGHT_PX = (14.0, 22.0)
CIRCLE_PERIOD = 24
"""Frames per revolution: a 12-frame clip shows half a circle."""
CIRCLE_RADIUS_PX = (12.0, 16.0)


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines a clip; positions in reference pixels (see REFERENCE_SIZE).

    ``(x0, y0)`` is the start position for linear motions and "still", the resting point on the
    floor (lowest position) for "bouncing" and the centre of the orbit for "circling".
    ``amplitude`` is the bounce height or the orbit radius (unused otherwise); ``phase`` in
    [0, 1) is the fraction of a bounce or revolution already done at frame 0.
    """

    colour: str
    shape: str
    motion: str
    background: str
    size_px: int
    x0: float
    y0: float
    phase: float = 0.0
    amplitude: float = 0.0

    def __post_init__(self):
        for value, table in ((self.colour, COLOURS), (self.shape, SHAPES),
                             (self.motion, MOTIONS), (self.background, BACKGROUNDS)):
            if value not in table:
                raise ValueError(f"unknown value {value!r}; expected one of {list(table)}")


@dataclass(frozen=True)
class PromptTarget:
    """What a prompt asks for; None where the prompt does not say."""

    colour: str | None
    shape: str | None
    motion: str | None
    background: str | None


@dataclass(frozen=True)
class EvalItem:
    """One evaluation prompt, the clip it describes, and the seed to generate it with."""

    prompt: str
    spec: ClipSpec
    seed: int


# ----------------------------------------------------------------------------- rendering

def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points lie inside ``shape``, in coordinates normalised to its bounding box.

    ``u`` (right) and ``v`` (down) are -1..1 across the box. The renderer and the analyzer's shape
    templates both use this, so they agree on what each shape looks like.
    """
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
    if shape == "triangle":  # apex up, base along the bottom of the box
        return (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0)
    raise ValueError(f"unknown shape {shape!r}")


def centre_path(spec: ClipSpec, num_frames: int) -> np.ndarray:
    """Object centre per frame, float [T, 2] as (x, y) in reference pixels."""
    t = np.arange(num_frames, dtype=np.float64)
    lo = spec.size_px / 2.0 + MARGIN_PX
    hi = REFERENCE_SIZE - lo
    x = np.full_like(t, spec.x0)
    y = np.full_like(t, spec.y0)
    step = LINEAR_SPEED_PX * t
    if spec.motion == "left":
        x = np.clip(spec.x0 - step, lo, hi)
    elif spec.motion == "right":
        x = np.clip(spec.x0 + step, lo, hi)
    elif spec.motion == "up":
        y = np.clip(spec.y0 - step, lo, hi)
    elif spec.motion == "down":
        y = np.clip(spec.y0 + step, lo, hi)
    elif spec.motion == "bouncing":
        y = spec.y0 - spec.amplitude * np.abs(np.sin(np.pi * (t / BOUNCE_PERIOD + spec.phase)))
    elif spec.motion == "circling":
        angle = 2.0 * np.pi * (t / CIRCLE_PERIOD + spec.phase)
        x = spec.x0 + spec.amplitude * np.cos(angle)
        y = spec.y0 + spec.amplitude * np.sin(angle)
    return np.stack([x, y], axis=1)


def render_clip(spec: ClipSpec, num_frames: int, size: int = 64) -> np.ndarray:
    """Render ``spec`` as uint8 RGB frames [T, size, size, 3] (hard edges, deterministic)."""
    scale = REFERENCE_SIZE / size
    pixel_centres = (np.arange(size) + 0.5) * scale  # in reference pixels
    half = spec.size_px / 2.0
    path = centre_path(spec, num_frames)
    u = (pixel_centres[None, None, :] - path[:, 0, None, None]) / half
    v = (pixel_centres[None, :, None] - path[:, 1, None, None]) / half
    mask = shape_inside(spec.shape, u, v)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[...] = BACKGROUNDS[spec.background]
    frames[mask] = COLOURS[spec.colour]
    return frames


# ----------------------------------------------------------------------------- sampling

def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _sample_geometry(rng: np.random.Generator, colour: str, shape: str, motion: str,
                     background: str) -> ClipSpec:
    """Draw size, start position, phase and amplitude so the object stays inside the frame."""
    size_px = int(rng.integers(SIZE_RANGE_PX[0], SIZE_RANGE_PX[1] + 1))
    lo = size_px / 2.0 + MARGIN_PX
    hi = REFERENCE_SIZE - lo
    spread = LINEAR_START_SPREAD_PX
    phase, amplitude = 0.0, 0.0
    x0, y0 = _uniform(rng, lo, hi), _uniform(rng, lo, hi)
    if motion == "right":
        x0 = _uniform(rng, lo, lo + spread)
    elif motion == "left":
        x0 = _uniform(rng, hi - spread, hi)
    elif motion == "down":
        y0 = _uniform(rng, lo, lo + spread)
    elif motion == "up":
        y0 = _uniform(rng, hi - spread, hi)
    elif motion == "bouncing":
        amplitude = _uniform(rng, *BOUNCE_HEIGHT_PX)
        y0 = _uniform(rng, lo + amplitude, hi)
        phase = _uniform(rng, 0.0, 1.0)
    elif motion == "circling":
        amplitude = _uniform(rng, *CIRCLE_RADIUS_PX)
        x0 = _uniform(rng, lo + amplitude, hi - amplitude)
        y0 = _uniform(rng, lo + amplitude, hi - amplitude)
        phase = _uniform(rng, 0.0, 1.0)
    return ClipSpec(colour, shape, motion, background, size_px, x0, y0, phase, amplitude)


def _split_values(split: str, train, evaluation):
    if split == "train":
        return train
    if split == "eval":
        return evaluation
    raise ValueError(f"split must be 'train' or 'eval', not {split!r}")


def sample_spec(rng: np.random.Generator, split: str = "train") -> ClipSpec:
    """A random clip whose (colour, shape, motion) belongs to ``split`` ("train" or "eval")."""
    combos = _split_values(split, TRAIN_COMBOS, sorted(HELD_OUT_COMBOS))
    colour, shape, motion = combos[int(rng.integers(len(combos)))]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return _sample_geometry(rng, colour, shape, motion, background)


# ----------------------------------------------------------------------------- captions

def _fill(template: str, colour: str, shape: str, motion: str, background: str) -> str:
    """Fill a template with chosen words and fix the article ("a orange" -> "an orange")."""
    text = template.format(c=colour, s=shape, m=motion, b=background)
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def caption(spec: ClipSpec, phrasing: int, rng: np.random.Generator | None = None) -> str:
    """Caption ``spec`` with template number ``phrasing`` (0 <= phrasing < NUM_PHRASINGS).

    Without ``rng`` every attribute takes its first (canonical) word; with it, synonyms are drawn
    at random, which is how training captions get their variety.
    """
    def pick(words: tuple[str, ...]) -> str:
        return words[0] if rng is None else words[int(rng.integers(len(words)))]

    return _fill(TEMPLATES[phrasing], pick(COLOUR_WORDS[spec.colour]),
                 pick(SHAPE_WORDS[spec.shape]), pick(MOTION_PHRASES[spec.motion]),
                 pick(BACKGROUND_WORDS[spec.background]))


def sample_phrasing(rng: np.random.Generator, split: str = "train") -> int:
    """A random phrasing (template number) of ``split``; ``caption`` fills it."""
    phrasings = _split_values(split, TRAIN_PHRASINGS, EVAL_PHRASINGS)
    return phrasings[int(rng.integers(len(phrasings)))]


def words(text: str) -> list[str]:
    """The word tokens of a text, as the bundled model's tokenizer sees them."""
    return re.findall(r"[a-z]+", text.lower())


@lru_cache(maxsize=1)
def _training_vocabulary() -> tuple[str, ...]:
    # A word's presence (and its article) depends only on the template and on that word, so
    # varying one slot at a time over all its options reaches every word of every training caption.
    slots = {"colour": [w for ws in COLOUR_WORDS.values() for w in ws],
             "shape": [w for ws in SHAPE_WORDS.values() for w in ws],
             "motion": [p for ps in MOTION_PHRASES.values() for p in ps],
             "background": [w for ws in BACKGROUND_WORDS.values() for w in ws]}
    defaults = {name: options[0] for name, options in slots.items()}
    vocabulary: set[str] = set()
    for phrasing in TRAIN_PHRASINGS:
        for name, options in slots.items():
            for option in options:
                filled = _fill(TEMPLATES[phrasing], **{**defaults, name: option})
                vocabulary.update(words(filled))
    return tuple(sorted(vocabulary))


def training_vocabulary() -> list[str]:
    """Sorted set of the words that training captions can contain."""
    return list(_training_vocabulary())


def eval_set(n: int, seed: int = 0) -> list[EvalItem]:
    """``n`` deterministic evaluation items: held-out combinations with held-out phrasings.

    Combinations are cycled (reshuffled each cycle), so any multiple of len(HELD_OUT_COMBOS) items
    holds every combination equally often; backgrounds and phrasings are cycled too.
    """
    rng = np.random.default_rng(seed)
    combos = sorted(HELD_OUT_COMBOS)
    backgrounds = list(BACKGROUNDS)
    items = []
    order: list[int] = []
    for i in range(n):
        if not order:
            order = list(rng.permutation(len(combos)))
        colour, shape, motion = combos[order.pop()]
        spec = _sample_geometry(rng, colour, shape, motion, backgrounds[i % len(backgrounds)])
        prompt = caption(spec, EVAL_PHRASINGS[i % len(EVAL_PHRASINGS)], rng)
        items.append(EvalItem(prompt, spec, int(rng.integers(2**31))))
    return items


@dataclass(frozen=True)
class SwitchEvalItem:
    """A held-out prompt schedule whose object changes colour at a block, and the seed to run it with."""

    schedule: tuple[tuple[int, str], ...]
    spec: ClipSpec  # what the clip shows from block 0; the switch changes only its colour
    colour_after: str
    seed: int


def switch_eval_set(n: int, switch_block: int, seed: int = 0) -> list[SwitchEvalItem]:
    """``n`` deterministic switch schedules built from ``eval_set(n, seed)``: the held-out clip's
    caption (canonical words, its held-out phrasing) from block 0 and, from ``switch_block``, the
    same caption with another colour (cycling through the others), so shape, motion and
    background stay."""
    items = []
    for i, item in enumerate(eval_set(n, seed)):
        others = [colour for colour in COLOURS if colour != item.spec.colour]
        after = others[i % len(others)]
        phrasing = EVAL_PHRASINGS[i % len(EVAL_PHRASINGS)]
        before_text = caption(item.spec, phrasing)
        after_text = caption(replace(item.spec, colour=after), phrasing)
        items.append(SwitchEvalItem(((0, before_text), (switch_block, after_text)), item.spec, after, item.seed))
    return items


def training_clip(rng: np.random.Generator, blocks: int, frames_per_block: int = 3, size: int = 64,
                  switch_block: int | None = None) -> tuple[np.ndarray, list[str]]:
    """A training clip of ``blocks`` blocks, uint8 [T, size, size, 3], and one caption per block.

    With ``switch_block`` the object changes colour, shape or motion at that block (to another
    training combination, from where it is) and the blocks from there on carry the new caption,
    in the same phrasing with fresh synonyms, as a user edits a prompt."""
    num_frames = blocks * frames_per_block
    spec = sample_spec(rng, "train")
    phrasing = sample_phrasing(rng, "train")
    before = caption(spec, phrasing, rng)
    if switch_block is None:
        return render_clip(spec, num_frames, size), [before] * blocks
    if not 0 < switch_block < blocks:
        raise ValueError(f"switch_block must be inside the clip's {blocks} blocks, not at {switch_block}")
    switch_frame = switch_block * frames_per_block
    after = switched_spec(rng, spec, switch_frame)
    frames = np.concatenate([render_clip(spec, switch_frame, size), render_clip(after, num_frames - switch_frame, size)])
    return frames, [before] * switch_block + [caption(after, phrasing, rng)] * (blocks - switch_block)


def spec_at_frame(spec: ClipSpec, frame: int) -> ClipSpec:
    """``spec`` as seen from ``frame`` on: the same clip, its frame ``frame`` as frame 0."""
    if spec.motion == "bouncing":
        return replace(spec, phase=(spec.phase + frame / BOUNCE_PERIOD) % 1.0)
    if spec.motion == "circling":
        return replace(spec, phase=(spec.phase + frame / CIRCLE_PERIOD) % 1.0)
    x, y = centre_path(spec, frame + 1)[frame]
    return replace(spec, x0=float(x), y0=float(y))


def switched_spec(rng: np.random.Generator, spec: ClipSpec, frame: int) -> ClipSpec:
    """What ``spec`` turns into at ``frame``: another colour, shape or motion, a training
    combination, starting where the object is then (frame 0 of the result is that frame)."""
    now = spec_at_frame(spec, frame)
    x, y = centre_path(now, 1)[0]
    options = [replace(now, colour=c) for c in COLOURS if c != spec.colour]
    options += [replace(now, shape=s) for s in SHAPES if s != spec.shape]
    options += [moved for m in MOTIONS if m != spec.motion
                if (moved := _moving_from(rng, now, m, float(x), float(y))) is not None]
    options = [o for o in options if (o.colour, o.shape, o.motion) not in HELD_OUT_COMBOS]
    return options[int(rng.integers(len(options)))]


def _moving_from(rng: np.random.Generator, spec: ClipSpec, motion: str, x: float, y: float) -> ClipSpec | None:
    """``spec`` starting ``motion`` at (x, y), inside the frame; None where it cannot (an orbit
    through a point near a corner)."""
    lo = spec.size_px / 2.0 + MARGIN_PX
    hi = REFERENCE_SIZE - lo
    if motion == "bouncing":  # (x, y) is somewhere on the way up, the floor and the top inside
        amplitude = _uniform(rng, *BOUNCE_HEIGHT_PX)
        height = _uniform(rng, max(0.0, amplitude - (y - lo)), min(amplitude, hi - y))
        return replace(spec, motion=motion, x0=x, y0=y + height, amplitude=amplitude,
                       phase=float(np.arcsin(height / amplitude) / np.pi))
    if motion == "circling":  # the orbit's centre towards the middle of the frame
        amplitude = _uniform(rng, *CIRCLE_RADIUS_PX)
        angle = float(np.arctan2(y - REFERENCE_SIZE / 2, x - REFERENCE_SIZE / 2))
        cx, cy = x - amplitude * np.cos(angle), y - amplitude * np.sin(angle)
        if not all(lo + amplitude <= c <= hi - amplitude for c in (cx, cy)):
            return None
        return replace(spec, motion=motion, x0=float(cx), y0=float(cy), amplitude=amplitude,
                       phase=angle / (2 * np.pi) % 1.0)
    return replace(spec, motion=motion, x0=x, y0=y, phase=0.0, amplitude=0.0)


# ----------------------------------------------------------------------------- parsing

def _lookup(table: dict[str, tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    return {tuple(words(phrase)): value for value, phrases in table.items() for phrase in phrases}


_MOTION_LOOKUP = _lookup(MOTION_KEYWORDS)
_LONGEST_MOTION = max(len(key) for key in _MOTION_LOOKUP)
_COLOUR_LOOKUP = _lookup(COLOUR_WORDS)
_SHAPE_LOOKUP = _lookup(SHAPE_WORDS)
_BACKGROUND_LOOKUP = _lookup(BACKGROUND_WORDS)


def _take_motion(tokens: list[str]) -> tuple[str | None, list[str]]:
    """First motion named in ``tokens`` (longest phrase wins) and the tokens left over."""
    for start in range(len(tokens)):
        for length in range(min(_LONGEST_MOTION, len(tokens) - start), 0, -1):
            motion = _MOTION_LOOKUP.get(tuple(tokens[start:start + length]))
            if motion is not None:
                return motion, tokens[:start] + tokens[start + length:]
    return None, tokens


def _first(tokens: list[str], lookup: dict[tuple[str, ...], str]) -> str | None:
    return next((lookup[(token,)] for token in tokens if (token,) in lookup), None)


def parse_prompt(text: str) -> PromptTarget:
    """Read the colour, shape, motion and background a free-text prompt asks for.

    Keyword matching over the caption synonym tables; the first mention of each attribute wins.
    The motion is read first and its words removed, so "moving in a circle" does not name a shape.
    """
    motion, rest = _take_motion(words(text))
    return PromptTarget(colour=_first(rest, _COLOUR_LOOKUP), shape=_first(rest, _SHAPE_LOOKUP),
                        motion=motion, background=_first(rest, _BACKGROUND_LOOKUP))

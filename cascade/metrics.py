"""Timing and quality figures of a generation run.

A run's **timeline** is a list of work items that were executed, each a dict (or an object with
the same attributes) with keys:

- ``block``: int, the video block the forward belonged to;
- ``step``: int denoising step, the string ``"recache"``, or ``"switch@k"`` (a serial run's
  re-encoding of the block under the prompt that starts at block k);
- ``worker``: int, the worker (device) that ran it;
- ``start``, ``end``: seconds since the run started.

Quality figures compare two uint8 videos [T, H, W, 3]. PSNR of identical videos is ``inf``;
JSON has no infinity, so pass figures through :func:`json_safe` before serialising them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .schedule import WorkItem

TIMELINE_KEYS = ("block", "step", "worker", "start", "end")


def _as_dict(item: Any) -> dict[str, Any]:
    """A timeline item (mapping or object) as a plain dict of TIMELINE_KEYS."""
    if isinstance(item, Mapping):
        fields = item
    else:
        fields = {key: getattr(item, key) for key in TIMELINE_KEYS if hasattr(item, key)}
    missing = [key for key in TIMELINE_KEYS if key not in fields]
    if missing:
        raise ValueError(f"timeline item {item!r} lacks {missing}; needs {TIMELINE_KEYS}")
    return {key: fields[key] for key in TIMELINE_KEYS}


def _read_timeline(timeline: Iterable[Any]) -> list[dict[str, Any]]:
    """Timeline items as plain dicts, with a clear error for a malformed item."""
    items = []
    for index, item in enumerate(timeline):
        items.append(_as_dict(item))
        if items[-1]["end"] < items[-1]["start"]:
            raise ValueError(f"timeline item {index} ends before it starts: {item!r}")
    if not items:
        raise ValueError("timeline is empty")
    return items


def block_completion_times(timeline: Iterable[Any], num_blocks: int) -> list[float]:
    """End of the last item of each block, in block order (index b = block b). A switch recache
    re-encodes a block long after it was done, so it does not count."""
    done: dict[int, float] = {}
    for item in _read_timeline(timeline):
        if WorkItem(item["block"], item["step"]).switch is None:
            done[item["block"]] = max(done.get(item["block"], -math.inf), item["end"])
    if sorted(done) != list(range(num_blocks)):
        raise ValueError(f"timeline blocks {sorted(done)} are not 0..{num_blocks - 1}")
    return [done[b] for b in range(num_blocks)]


def steady_block_fps(completions: Sequence[float], frames_per_block: int) -> float:
    """Frames per second delivered once the pipeline is full, as the Block Cascading paper counts.

    With blocks completing at times c_0 <= c_1 <= ... <= c_{N-1} (sorted), the steady-state
    interval is the mean gap between consecutive completions, (c_{N-1} - c_0) / (N - 1): the
    time spent filling the pipeline before block 0 is done is left out, which is what makes
    this a throughput figure for streaming rather than a latency. block_fps =
    frames_per_block / interval. With a single block there is no interval and the block's own
    latency c_0 is used. Blocks that all complete at the same instant give ``inf``.
    """
    times = sorted(completions)
    if len(times) == 1:
        interval = times[0]
    else:
        interval = (times[-1] - times[0]) / (len(times) - 1)
    return frames_per_block / interval if interval > 0 else math.inf


def run_timing(timeline: Iterable[Any], frames_per_block: int, num_blocks: int,
               total_frames: int | None = None) -> dict[str, Any]:
    """Timing figures of one run.

    `frames_per_block` counts the frames the viewer gets per block (video frames after
    decoding, not latent frames), so FPS figures are in the viewer's frames; `total_frames`,
    when a causal decoder gives the first block fewer (Wan's VAE: 9, then 12 per block), is the
    whole video's. Returns:

    - ``latency_s``: end of the last item (the whole video is ready);
    - ``time_to_first_block_s``: end of the last item of block 0 (first frames can be shown);
    - ``fps``: total_frames (default frames_per_block * num_blocks) / latency_s;
    - ``block_fps``: steady-state throughput, see :func:`steady_block_fps`;
    - ``forwards``: number of items (model forwards, recache included), each counted once when
      several workers ran it together (the tokens placement: each on its share of the tokens);
    - ``busy_share``: {worker: summed item durations / latency_s}, how much each worker worked.
    """
    items = _read_timeline(timeline)
    completions = block_completion_times(items, num_blocks)
    latency = max(item["end"] for item in items)
    if latency <= 0:
        raise ValueError(f"timeline must end after time 0, last end is {latency}")
    busy: dict[int, float] = defaultdict(float)
    for item in items:
        busy[item["worker"]] += item["end"] - item["start"]
    return {
        "latency_s": latency,
        "time_to_first_block_s": completions[0],
        "fps": (frames_per_block * num_blocks if total_frames is None else total_frames) / latency,
        "block_fps": steady_block_fps(completions, frames_per_block),
        "forwards": len({(item["block"], str(item["step"])) for item in items}),
        "busy_share": {worker: busy[worker] / latency for worker in sorted(busy)},
    }


def prompt_segments(block_frames: Sequence[int], prompts: Sequence[tuple[int, str]]) -> list[dict]:
    """The stretches of a video that each prompt of a prompt schedule should show: from its block
    to the next switch, leaving out the block right after each switch (the transition, which
    starts under the old context). Each: ``{"prompt", "blocks": [first, end), "frames": [first,
    end)}``; ``block_frames`` are the frames each block decoded to. A prompt with no block left
    (a switch right after another) has no stretch."""
    starts = np.cumsum([0, *block_frames])
    ends = [block for block, _ in prompts[1:]] + [len(block_frames)]
    segments = []
    for (block, prompt), end in zip(prompts, ends):
        first = block if block == 0 else block + 1
        if first < end:
            segments.append({"prompt": prompt, "blocks": [first, end], "frames": [int(starts[first]), int(starts[end])]})
    return segments


def judge_segments(judge, frames: np.ndarray, block_frames: Sequence[int],
                   prompts: Sequence[tuple[int, str]]) -> list[dict]:
    """``judge(frames, prompt)`` (a world's verdict) on each stretch of ``prompt_segments``
    against its own prompt: the segment's fields and the verdict's scores."""
    return [{**segment, **judge(frames[slice(*segment["frames"])], segment["prompt"])}
            for segment in prompt_segments(block_frames, prompts)]


def _validate_pair(a: np.ndarray, b: np.ndarray) -> None:
    for name, video in (("a", a), ("b", b)):
        if not isinstance(video, np.ndarray) or video.dtype != np.uint8:
            got = getattr(video, "dtype", type(video).__name__)
            raise ValueError(f"{name} must be a uint8 numpy array, got {got}")
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"{name} must have shape [T, H, W, 3], got {video.shape}")
    if a.shape != b.shape:
        raise ValueError(f"videos differ in shape: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 videos [T, H, W, 3] (peak 255).

    The MSE is taken over the whole video (every frame, pixel and channel) before the log, so
    one bad frame is not averaged away in dB. Identical videos give ``inf``.
    """
    _validate_pair(a, b)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else float(10 * np.log10(255.0**2 / mse))


SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    offsets = np.arange(size) - (size - 1) / 2
    weights = np.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of [H, W, C] over H and W (no padding, as Wang et al.)."""
    size = len(window)
    rows = sum(w * image[k : image.shape[0] - size + 1 + k] for k, w in enumerate(window))
    return sum(w * rows[:, k : rows.shape[1] - size + 1 + k] for k, w in enumerate(window))


def _ssim_frame(x: np.ndarray, y: np.ndarray, window: np.ndarray) -> float:
    """Mean SSIM map of one frame pair [H, W, C] float64, all channels pooled."""
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mu_x**2
    var_y = _filter_valid(y * y, window) - mu_y**2
    cov = _filter_valid(x * y, window) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((numerator / denominator).mean())


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two uint8 videos [T, H, W, 3], in [-1, 1] (1 = identical).

    Standard SSIM (Wang et al. 2004): 11×11 Gaussian window with sigma 1.5, K1 = 0.01,
    K2 = 0.03, dynamic range 255, computed per RGB channel on the valid region, averaged over
    channels and pixels of each frame and then over frames. Frames are processed one at a time
    so memory stays small for long, large videos. Frames must be at least 11×11.
    """
    _validate_pair(a, b)
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(
            f"ssim needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {a.shape[1:3]}"
        )
    window = _gaussian_window()
    scores = [
        _ssim_frame(x.astype(np.float64), y.astype(np.float64), window) for x, y in zip(a, b)
    ]
    return float(np.mean(scores))


# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom: table up to 30, Cornish-Fisher series above.

    The series (three terms in 1/df) is accurate to better than 1e-4 for df > 30, which saves a
    scipy dependency for one number.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def mean_ci95(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its two-sided 95% Student t confidence interval.

    Meant for repeated timings (a handful of runs), hence t rather than normal quantiles. A
    single value has no spread to estimate: lo and hi are then ``nan``.
    """
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(data.mean())
    if data.size == 1:
        return mean, math.nan, math.nan
    half = t_quantile_975(data.size - 1) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean, mean - half, mean + half


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by its name ("inf", "-inf", "nan").

    Standard JSON (and browsers' JSON.parse) has no Infinity or NaN; a string keeps the meaning
    readable and ``float(s)`` turns it back. Recurses into dicts, lists and tuples; numpy scalars
    become Python numbers and dict keys strings (as JSON has them: a stats dict then reads the
    same before and after a round trip through a file or an API).
    """
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def mcnemar_p(reference: Sequence[bool], other: Sequence[bool]) -> float:
    """Exact two-sided McNemar test of paired 0/1 verdicts: the chance, if both runs were equally
    good, of pairs disagreeing at least this one-sidedly (a binomial test on the discordant pairs)."""
    if len(reference) != len(other):
        raise ValueError(f"paired verdicts need equal lengths, got {len(reference)} and {len(other)}")
    only_reference = sum(1 for a, b in zip(reference, other) if a and not b)
    only_other = sum(1 for a, b in zip(reference, other) if b and not a)
    discordant = only_reference + only_other
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(only_reference, only_other) + 1)) / 2 ** discordant
    return min(1.0, 2 * tail)

"""MP4 export and side-by-side composition of generated videos.

Videos are numpy arrays of shape [T, H, W, 3], dtype uint8. Composition (upscaling, label
banners, the separator) is done in numpy with Pillow drawing the text: Pillow's built-in font
needs no font file on the system, so labels render the same on a laptop, in CI and on a Space.
moviepy's ffmpeg writer encodes the frames, as they arrive (``Mp4Writer``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BANNER_BACKGROUND = (24, 24, 24)
BANNER_TEXT = (240, 240, 240)
SEPARATOR_COLOUR = (128, 128, 128)
MIN_FONT_SIZE = 6


def validate_frames(frames: np.ndarray, name: str = "frames") -> None:
    """Raise ValueError unless `frames` is a non-empty uint8 video of shape [T, H, W, 3]."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(frames).__name__}")
    if frames.ndim != 4:
        raise ValueError(f"{name} must have 4 dims [T, H, W, 3], got shape {frames.shape}")
    if frames.shape[-1] != 3:
        raise ValueError(f"{name} must have 3 colour channels (RGB), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 in 0..255, got dtype {frames.dtype}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"{name} must hold at least one non-empty frame, got shape {frames.shape}")


def _validate_scale(scale: int) -> None:
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor: keeps tiny videos' pixels crisp."""
    _validate_scale(scale)
    if scale == 1:
        return frames
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Repeat the last row/column where needed: libx264 with yuv420p needs even sizes."""
    pad_h = frames.shape[1] % 2
    pad_w = frames.shape[2] % 2
    if not (pad_h or pad_w):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")


# libx264's fastest preset: the three videos of a default comparison take 0.18 s instead of 0.54 s
# with "medium", for files about 1.3x larger (35 KB, not 27 KB, for a 64x64 video shown at 256).
X264_PRESET = "ultrafast"


class Mp4Writer:
    """An H.264 mp4 that browsers play (yuv420p), written as its frames arrive.

    ``add(frames)`` queues frames [T, H, W, 3] uint8 (a block of a run, say) and returns at once:
    a thread upscales them (nearest neighbour by ``scale``, padded to even sizes) and pipes them
    to ffmpeg, which encodes in its own process. So a video fed block by block during a run is
    done moments after the run's last block instead of being encoded after the run. ``close()``
    waits for every frame to be written, finishes the file and returns its path (re-raising the
    first error, if any); every ``add`` must have the first's frame size.
    """

    def __init__(self, path: str | Path, fps: float = 8, scale: int = 1):
        _validate_scale(scale)
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps!r}")
        self.path, self.fps, self.scale = Path(path), fps, scale
        self._ffmpeg = None
        self._frame_shape: tuple[int, ...] | None = None
        self._pending: list[Future] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mp4")  # one: frames stay in order

    def add(self, frames: np.ndarray) -> None:
        validate_frames(frames)
        if self._frame_shape is None:
            self._frame_shape = frames.shape[1:]
        elif frames.shape[1:] != self._frame_shape:
            raise ValueError(f"frames of {self.path.name} must all be {self._frame_shape}, got {frames.shape[1:]}")
        self._pending.append(self._thread.submit(self._write, frames))

    def _write(self, frames: np.ndarray) -> None:
        frames = pad_to_even(upscale(frames, self.scale))
        if self._ffmpeg is None:
            from moviepy.video.io.ffmpeg_writer import FFMPEG_VideoWriter  # deferred: importing moviepy is slow

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._ffmpeg = FFMPEG_VideoWriter(str(self.path), (frames.shape[2], frames.shape[1]), self.fps,
                                              codec="libx264", preset=X264_PRESET,
                                              threads=1)  # one core: it encodes beside a run's workers
        for frame in frames:
            self._ffmpeg.write_frame(frame)

    def close(self) -> Path:
        try:
            for write in self._pending:
                write.result()
            if self._ffmpeg is None:
                raise ValueError(f"no frames were added to {self.path.name}")
        finally:
            self._thread.shutdown()
            if self._ffmpeg is not None:
                self._ffmpeg.close()
        return self.path


def write_mp4(frames: np.ndarray, path: str | Path, fps: float = 8, scale: int = 1) -> Path:
    """Encode `frames` [T, H, W, 3] uint8 as an H.264 mp4 that browsers play (yuv420p).

    `scale` upscales with nearest neighbour first (a 64×64 video wants about 4). The parent
    folder is created if missing. Returns the path written.
    """
    writer = Mp4Writer(path, fps=fps, scale=scale)
    writer.add(frames)
    return writer.close()


def hold_last_frame(frames: np.ndarray, length: int) -> np.ndarray:
    """Extend a video to `length` frames by repeating its last frame (no-op if long enough)."""
    missing = length - frames.shape[0]
    if missing <= 0:
        return frames
    return np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)], axis=0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def fitting_font_size(texts: list[str], width: int, max_size: int) -> int:
    """Largest font size <= `max_size` at which every text fits in `width` pixels.

    One size for all labels keeps the two banners of a comparison looking alike.
    """
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max(MIN_FONT_SIZE, max_size)
    def fits(size: int) -> bool:
        return all(measure.textlength(text, font=_font(size)) <= width for text in texts)

    while size > MIN_FONT_SIZE and not fits(size):
        size -= 1
    return size


def label_banner(text: str, width: int, height: int, font_size: int) -> np.ndarray:
    """A [height, width, 3] uint8 strip with `text` centred (clipped if it cannot fit)."""
    image = Image.new("RGB", (width, height), BANNER_BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font(font_size)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    # Centre vertically on a reference with ascender and descender, so that labels share a
    # baseline whatever letters they contain.
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font)
    origin = ((width - (right - left)) / 2 - left, (height - (bottom - top)) / 2 - top)
    draw.text(origin, text, fill=BANNER_TEXT, font=font)
    return np.asarray(image, dtype=np.uint8)


def banner_height(width: int) -> int:
    """Banner height for a video column `width` pixels wide: readable, not dominant."""
    return int(np.clip(width // 8, 14, 48))


def _with_banner(frames: np.ndarray, label: str, height: int, font_size: int) -> np.ndarray:
    banner = label_banner(label, frames.shape[2], height, font_size)
    banners = np.broadcast_to(banner, (frames.shape[0], *banner.shape))
    return np.concatenate([banners, frames], axis=1)


def side_by_side(
    left: np.ndarray, right: np.ndarray, left_label: str, right_label: str, scale: int = 1
) -> np.ndarray:
    """Compose two videos next to each other, each under a label banner, split by a thin bar
    (``in_columns`` of the two)."""
    return in_columns([left, right], [left_label, right_label], scale=scale, names=("left", "right"))


def in_columns(
    videos: Sequence[np.ndarray], labels: Sequence[str], scale: int = 1, names: Sequence[str] | None = None
) -> np.ndarray:
    """Compose videos in columns, left to right, each under a label banner, split by thin bars.

    The videos are upscaled by `scale` before the labels are drawn, so the text is rendered at
    the output resolution. They must have the same height; if their lengths differ, the shorter
    ones hold their last frame so all stay visible to the end. `names` name the videos in errors.
    Returns [T, H', W', 3] uint8.
    """
    if len(videos) != len(labels) or not videos:
        raise ValueError(f"need one label per video, got {len(videos)} videos and {len(labels)} labels")
    names = names or [f"video {i + 1}" for i in range(len(videos))]
    for video, name in zip(videos, names):
        validate_frames(video, name)
    heights = [video.shape[1] for video in videos]
    if len(set(heights)) > 1:
        raise ValueError(f"{' and '.join(names)} must have the same height, got {' and '.join(map(str, heights))}")
    videos = [upscale(video, scale) for video in videos]
    length = max(video.shape[0] for video in videos)
    videos = [hold_last_frame(video, length) for video in videos]

    column_width = min(video.shape[2] for video in videos)
    height = banner_height(column_width)
    font_size = fitting_font_size(list(labels), column_width - 4, int(height * 0.7))
    columns = [_with_banner(video, label, height, font_size) for video, label in zip(videos, labels)]
    separator = np.empty((length, columns[0].shape[1], max(2, scale), 3), dtype=np.uint8)
    separator[...] = SEPARATOR_COLOUR
    parts = [part for column in columns for part in (separator, column)][1:]
    return np.concatenate(parts, axis=2)


def write_side_by_side(
    videos: Sequence[np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    fps: float = 8,
    scale: int = 1,
) -> Path:
    """Write the `in_columns` composition of the videos (two, or three with a sequence run) as an
    mp4; returns the path."""
    return write_mp4(in_columns(videos, labels, scale=scale), path, fps=fps)

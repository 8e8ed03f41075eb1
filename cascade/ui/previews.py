"""Previews of a run's frames: thumbnails, the strip that fills in block by block while a
comparison runs, and the sprite sheet the race replay draws from."""

import base64
import io

import numpy as np
from PIL import Image

THUMB_MAX_SIDE = 128  # strip and replay tiles: small enough for any model's frames


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """A frame no larger than THUMB_MAX_SIDE on its long side (tiny models' frames stay as they are)."""
    height, width = frame.shape[:2]
    scale = THUMB_MAX_SIDE / max(height, width)
    if scale >= 1:
        return frame
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))


def block_strip(tiles: dict[int, np.ndarray], num_blocks: int, tile_shape: tuple[int, int]) -> np.ndarray:
    """One tile per block, left to right: the block's last frame once it is final, else dark."""
    height, width = tile_shape
    strip = np.full((height, width * num_blocks, 3), 42, dtype=np.uint8)
    for block, tile in tiles.items():
        strip[:, block * width:(block + 1) * width] = tile
    return strip


def sprite(frames: np.ndarray, counts: list[int]) -> str:
    """All frames as one PNG data URI: a row per block, its frames left to right."""
    thumbs = [thumbnail(frame) for frame in frames]
    height, width = thumbs[0].shape[:2]
    sheet = np.zeros((height * len(counts), width * max(counts), 3), dtype=np.uint8)
    first = 0
    for block, count in enumerate(counts):
        for i in range(count):
            sheet[block * height:(block + 1) * height, i * width:(i + 1) * width] = thumbs[first + i]
        first += count
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

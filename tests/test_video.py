import imageio_ffmpeg
import numpy as np
import pytest

from cascade.video import (
    Mp4Writer,
    banner_height,
    hold_last_frame,
    in_columns,
    pad_to_even,
    side_by_side,
    upscale,
    write_mp4,
    write_side_by_side,
)


def solid(colour, frames=4, height=16, width=16):
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    video[...] = colour
    return video


def read_mp4(path):
    """(width, height), frames [T, H, W, 3] of an mp4, decoded by ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, dtype=np.uint8).reshape(height, width, 3) for f in reader]
    return (width, height), np.stack(frames)


def test_write_mp4_round_trip(tmp_path):
    colour = (200, 40, 60)
    video = solid(colour, frames=5, height=15, width=9)
    path = write_mp4(video, tmp_path / "sub" / "a.mp4", fps=8, scale=2)

    assert path.exists()
    size, frames = read_mp4(path)
    assert size == (18, 30)  # 9×2 and 15×2 are already even
    assert frames.shape[0] == 5
    assert np.abs(frames.astype(int) - colour).max() <= 8


def test_write_mp4_pads_odd_sizes(tmp_path):
    video = solid((10, 120, 250), frames=1, height=7, width=5)
    size, frames = read_mp4(write_mp4(video, tmp_path / "b.mp4"))
    assert size == (6, 8)
    assert frames.shape[0] == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), "4 dims"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), "3 colour channels"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), "at least one"),
        ([[0]], "numpy array"),
    ],
)
def test_write_mp4_rejects_bad_frames(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        write_mp4(bad, tmp_path / "x.mp4")


def test_write_mp4_rejects_bad_scale_and_fps(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        write_mp4(solid(0), tmp_path / "x.mp4", scale=0)
    with pytest.raises(ValueError, match="fps"):
        write_mp4(solid(0), tmp_path / "x.mp4", fps=0)


def test_mp4_written_block_by_block_equals_the_whole_video_encoded_at_once(tmp_path):
    video = np.concatenate([solid(colour, frames=3, height=10, width=6) for colour in ((250, 0, 0), (0, 250, 0), (0, 0, 250))])
    writer = Mp4Writer(tmp_path / "blocks.mp4", fps=8, scale=3)
    for start in range(0, 9, 3):
        writer.add(video[start:start + 3])
    size, frames = read_mp4(writer.close())
    assert (size, frames.shape[0]) == ((18, 30), 9)
    assert np.array_equal(frames, read_mp4(write_mp4(video, tmp_path / "whole.mp4", fps=8, scale=3))[1])
    assert [tuple(np.argmax(frames[i].mean(axis=(0, 1))) for i in (0, 3, 6))] == [(0, 1, 2)]


def test_mp4_writer_refuses_a_second_frame_size_and_an_empty_video(tmp_path):
    writer = Mp4Writer(tmp_path / "a.mp4")
    writer.add(solid(0, height=8, width=8))
    with pytest.raises(ValueError, match=r"must all be \(8, 8, 3\), got \(8, 10, 3\)"):
        writer.add(solid(0, height=8, width=10))
    writer.close()
    with pytest.raises(ValueError, match="no frames were added to b.mp4"):
        Mp4Writer(tmp_path / "b.mp4").close()


def test_upscale_is_nearest_neighbour():
    video = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    big = upscale(video, 3)
    assert big.shape == (2, 6, 6, 3)
    assert (big[:, ::3, ::3] == video).all()
    assert (big[:, 2, 2] == video[:, 0, 0]).all()


def test_pad_to_even_repeats_edges():
    video = np.arange(1 * 3 * 5 * 3, dtype=np.uint8).reshape(1, 3, 5, 3)
    padded = pad_to_even(video)
    assert padded.shape == (1, 4, 6, 3)
    assert (padded[:, 3, :5] == video[:, 2]).all()
    assert (padded[:, :3, 5] == video[:, :, 4]).all()


def test_hold_last_frame():
    video = np.arange(2, dtype=np.uint8).reshape(2, 1, 1, 1).repeat(3, axis=3)
    held = hold_last_frame(video, 4)
    assert held[:, 0, 0, 0].tolist() == [0, 1, 1, 1]
    assert hold_last_frame(video, 1) is video


def test_side_by_side_layout():
    red, green = (200, 20, 20), (20, 200, 20)
    left, right = solid(red, frames=5), solid(green, frames=3)
    scale = 2
    frames = side_by_side(left, right, "Serial", "Block Cascading", scale=scale)

    banner = banner_height(16 * scale)
    separator = max(2, scale)
    assert frames.dtype == np.uint8
    assert frames.shape == (5, banner + 16 * scale, 2 * 16 * scale + separator, 3)

    content_left = frames[:, banner:, : 16 * scale]
    content_right = frames[:, banner:, 16 * scale + separator :]
    assert (content_left == red).all()
    assert (content_right == green).all()  # frames 3 and 4 hold the last green frame

    banners = frames[:, :banner]
    assert not (banners[:, :, : 16 * scale] == red).all(axis=-1).any()
    assert (banners[0] == banners[-1]).all()
    # Some pixels of each banner are drawn text, not just background.
    assert len(np.unique(banners[0, :, : 16 * scale].reshape(-1, 3), axis=0)) > 2
    assert len(np.unique(banners[0, :, 16 * scale + separator :].reshape(-1, 3), axis=0)) > 2


def test_side_by_side_different_labels_draw_different_banners():
    video = solid((0, 0, 0))
    frames = side_by_side(video, video, "Serial", "Cascade", scale=4)
    width = video.shape[2] * 4
    banner = banner_height(width)
    assert not (frames[0, :banner, :width] == frames[0, :banner, -width:]).all()


def test_side_by_side_rejects_height_mismatch():
    with pytest.raises(ValueError, match="same height"):
        side_by_side(solid(0, height=16), solid(0, height=8), "a", "b")
    with pytest.raises(ValueError, match="right must be uint8"):
        side_by_side(solid(0), solid(0).astype(np.float32), "a", "b")


def test_write_side_by_side(tmp_path):
    white, blue = solid((250, 250, 250), frames=2), solid((0, 0, 250), frames=3)
    path = write_side_by_side([white, blue], ("A", "B"), tmp_path / "c.mp4", fps=4, scale=2)
    size, frames = read_mp4(path)
    assert frames.shape[0] == 3
    width, height = size
    assert width % 2 == 0 and height % 2 == 0
    assert np.abs(frames[-1, -8, 8].astype(int) - (250, 250, 250)).max() <= 8
    assert np.abs(frames[-1, -8, -8].astype(int) - (0, 0, 250)).max() <= 12


def test_three_columns_keep_their_order_and_bars():
    colours = [(200, 20, 20), (20, 200, 20), (20, 20, 200)]
    frames = in_columns([solid(c, frames=2) for c in colours], ["Serial", "Cascade", "Sequence"], scale=2)
    banner, width, bar = banner_height(32), 32, 2
    assert frames.shape == (2, banner + 32, 3 * width + 2 * bar, 3)
    for i, colour in enumerate(colours):
        assert (frames[:, banner:, i * (width + bar): i * (width + bar) + width] == colour).all()
    with pytest.raises(ValueError, match="one label per video"):
        in_columns([solid(0)], ["a", "b"])

"""Previews a person can see: upscaled renders, depth videos with a near/far key, MP4s that browsers
play (H.264, yuv420p, index first)."""
import imageio.v2 as imageio
import numpy as np
import torch

from gmnr.eval.video import depth_colorbar, depth_to_uint8, with_colorbar, write_video
from gmnr.train.samples import preview_factor, upscale


def test_small_renders_are_upscaled_by_whole_pixels_to_at_least_256():
    assert [preview_factor(s) for s in (16, 64, 100, 256, 512)] == [16, 4, 3, 1, 1]
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = upscale(image, 4)
    assert big.shape == (8, 12, 3)
    for y in range(2):
        for x in range(3):
            assert (big[4 * y:4 * y + 4, 4 * x:4 * x + 4] == image[y, x]).all()  # each pixel a 4 x 4 block
    frames = np.stack([image, image + 1])
    assert upscale(frames, 2).shape == (2, 4, 6, 3) and upscale(image, 1) is image


def test_the_depth_key_runs_from_the_near_colour_to_the_far_colour_with_both_distances():
    near, far = 0.95, 1.12
    bar = depth_colorbar(256, near, far)
    assert bar.shape[0] == 256 and bar.dtype == np.uint8
    # the colours depth_to_uint8 gives a pixel at the near and the far distance
    ends = depth_to_uint8(torch.tensor([near, far]).view(2, 1, 1, 1), near, far)[:, 0, 0]
    column = bar[:, bar.shape[1] // 2].astype(int)
    coloured = [y for y in range(256) if np.ptp(column[y]) > 30]  # viridis, never grey (the panel, the text)
    assert coloured == list(range(coloured[0], coloured[-1] + 1)) and len(coloured) > 128  # one bar, most of the height
    top, bottom = column[coloured[0]], column[coloured[-1]]
    assert np.abs(top - ends[0]).max() <= 6 and np.abs(bottom - ends[1]).max() <= 6, (top, bottom, ends)
    # the labels: dark text above and below the bar, on white
    assert (bar[:coloured[0]] < 100).any() and (bar[coloured[-1] + 1:] < 100).any()
    frames = np.zeros((3, 256, 256, 3), np.uint8)
    keyed = with_colorbar(frames, near, far)
    assert keyed.shape == (3, 256, 256 + bar.shape[1], 3)
    assert (keyed[:, :, :256] == 0).all() and (keyed[1, :, 256:] == bar).all()


def test_the_mp4_is_h264_yuv420p_with_its_index_first_and_odd_frames_padded(tmp_path):
    frames = np.full((6, 33, 41, 3), 90, np.uint8)
    for i, frame in enumerate(frames):
        frame[:, 3 * i:3 * i + 5] = (240, 200, 60)
    mp4, gif = write_video(frames, tmp_path / "sweep", 6)
    reader = imageio.get_reader(mp4)
    meta = reader.get_meta_data()
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["size"] == (42, 34)
    decoded = np.stack([frame for frame in reader])  # (list() asks for a length: inf)
    assert decoded.shape == (6, 34, 42, 3)
    assert np.abs(decoded[:, :33, :41].astype(int) - frames).mean() < 6  # the frames, not black
    data = mp4.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat")  # +faststart: a browser can start before the end
    assert gif.read_bytes()[:6] in (b"GIF89a", b"GIF87a")

"""Decoding user media: every bad-input kind becomes a SampleError with a reason; odd but valid
images are converted to RGB."""

from pathlib import Path

import numpy as np
import pytest
from support.media_files import BAD_IMAGES, ODD_IMAGES, write_clip

from core.errors import SampleError
from data_prep.config import ImageConfig, VideoConfig
from data_prep.media import decode_image, decode_video, read_caption

CFG = ImageConfig(size=32, min_size=8, max_pixels=4_000_000)


def load(path: Path):
    caption, _ = read_caption(path, required=True)
    return decode_image(path, CFG), caption


@pytest.mark.parametrize("name", [k for k in BAD_IMAGES if k != "dup"])
def test_bad_images_give_reasons(bad_image_folder, name):
    file, reason = BAD_IMAGES[name]
    with pytest.raises(SampleError, match=reason.split(" ")[0]) as info:
        load(bad_image_folder / file)
    assert reason in str(info.value)


@pytest.mark.parametrize("name", ODD_IMAGES)
def test_odd_modes_become_rgb(bad_image_folder, name):
    (pixels, info), caption = load(bad_image_folder / name)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert caption == "a caption"
    expected = {"rgba.png": (255, 255, 255), "sixteen.png": (255, 255, 255), "palette.gif": (0, 0, 255),
                "gray.png": (128, 128, 128)}
    if name in expected:
        assert np.abs(pixels.reshape(-1, 3).mean(0) - expected[name]).max() < 3, (name, pixels[0, 0])


def test_resize_is_center_crop(tmp_path):
    from PIL import Image

    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 20:60] = 255  # the central square is white, the sides black
    path = tmp_path / "wide.png"
    Image.fromarray(array).save(path)
    pixels, info = decode_image(path, CFG)
    assert info["width"] == 80 and pixels.min() > 240


def test_json_caption_and_extra_meta(tmp_path):
    path = tmp_path / "x.png"
    path.with_suffix(".json").write_text('{"text": "hello", "license": "cc0"}')
    caption, extra = read_caption(path, required=True)
    assert caption == "hello" and extra == {"license": "cc0"}
    assert read_caption(tmp_path / "y.png", required=False) == ("", {})


def test_video_sampling_at_target_fps(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, frames=16, fps=16, step=1)
    frames, info = decode_video(path, VideoConfig(fps=8, num_frames=8), CFG)
    assert frames.shape == (8, 32, 32, 3)
    # At half the source rate every second frame is taken: the red bar moves 2 px per sample.
    xs = [np.nonzero(f[12, :, 0] > 128)[0].mean() for f in frames]
    assert np.allclose(np.diff(xs), 2, atol=0.6), xs
    assert info["source_fps"] == 16


@pytest.mark.parametrize(
    "content, reason",
    [(b"", "empty file"), (b"not a video at all", "not a readable video"), ("truncate", "video")],
)
def test_bad_videos(tmp_path, content, reason):
    path = tmp_path / "bad.mp4"
    if content == "truncate":
        write_clip(tmp_path / "good.mp4", frames=16)
        data = (tmp_path / "good.mp4").read_bytes()
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes(content)
    with pytest.raises(SampleError, match=reason):
        decode_video(path, VideoConfig(fps=8, num_frames=8), CFG)


def test_short_video_is_rejected_with_advice(tmp_path):
    path = tmp_path / "short.mp4"
    write_clip(path, frames=4, fps=8)
    with pytest.raises(SampleError, match="video too short.*lower video.num_frames"):
        decode_video(path, VideoConfig(fps=8, num_frames=8), CFG)

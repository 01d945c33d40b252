"""Decode user media into fixed-size uint8 arrays, turning every kind of bad input into a
`SampleError` with a reason (never a crash): empty files, files that are not media, truncated
or undecodable data, decompression bombs, tiny images, odd modes (CMYK, grayscale, palette,
RGBA, 16-bit), videos that are too short or too long, captions that are missing or not UTF-8.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from core.errors import SampleError
from data_prep.config import ImageConfig, VideoConfig

# We check pixel counts ourselves (ImageConfig.max_pixels) before decoding, with a clear reason.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes | Path, cfg: ImageConfig) -> tuple[np.ndarray, dict]:
    """Bytes or a path -> (uint8 (size, size, 3), info). Center-crops to a square, then resizes."""
    if isinstance(data, Path):
        try:
            data = data.read_bytes()
        except OSError as exc:
            raise SampleError(f"cannot read file: {exc.strerror}") from None
    if not data:
        raise SampleError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > cfg.max_pixels:
                raise SampleError(
                    f"image is {width}x{height} = {width * height} pixels, over image.max_pixels={cfg.max_pixels} "
                    "(decompression-bomb guard)"
                )
            if min(width, height) < cfg.min_size:
                raise SampleError(f"image is {width}x{height}, smaller than image.min_size={cfg.min_size}")
            image = ImageOps.exif_transpose(image)  # also forces the full decode: truncation shows here
            mode = image.mode
            rgb = to_rgb(image)
    except SampleError:
        raise
    except Image.UnidentifiedImageError:
        raise SampleError("not an image (unrecognised format)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise SampleError(f"corrupt or truncated image: {exc}") from None
    return square_resize(rgb, cfg.size), {"width": width, "height": height, "mode": mode}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparent pixels go on white; 16-bit is scaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        span = float(array.max() - array.min()) or 1.0
        image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Center-crop to a square and resize: (size, size, 3) uint8."""
    image = ImageOps.fit(image, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def decode_video(path: Path, cfg: VideoConfig, image_cfg: ImageConfig) -> tuple[np.ndarray, dict]:
    """Sample `cfg.num_frames` frames at `cfg.fps` starting at `cfg.start_seconds`:
    uint8 (T, size, size, 3). Frame i is the last decoded frame whose timestamp is <= the i-th
    sample time, so a 30 fps video sampled at 8 fps takes every ~4th frame."""
    import av  # PyAV; imported here so image-only work does not load FFmpeg

    try:
        if path.stat().st_size == 0:
            raise SampleError("empty file")
        container = av.open(str(path))
    except SampleError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise SampleError(f"not a readable video: {exc}") from None
    try:
        if not container.streams.video:
            raise SampleError("file has no video stream")
        stream = container.streams.video[0]
        duration = _duration_seconds(container, stream)
        if cfg.max_seconds and duration is not None and duration > cfg.max_seconds:
            raise SampleError(f"video is {duration:.0f} s long, over video.max_seconds={cfg.max_seconds}")
        times = [cfg.start_seconds + i / cfg.fps for i in range(cfg.num_frames)]
        source_fps = float(stream.average_rate or 0) or None
        info = {"width": stream.codec_context.width, "height": stream.codec_context.height,
                "duration": duration, "source_fps": source_fps}
        frames: list[np.ndarray] = []
        last, last_t = None, 0.0
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base) if frame.pts is not None else last_t
            # Sample times before this frame's timestamp show the previous frame.
            while last is not None and len(frames) < len(times) and times[len(frames)] < t - 1e-6:
                frames.append(last)
            if len(frames) == len(times):
                break
            last, last_t = _frame_to_array(frame, image_cfg), t
        # The last frame stays on screen until the end of the video.
        end = duration if duration else last_t + (1.0 / source_fps if source_fps else 0.0)
        while last is not None and len(frames) < len(times) and times[len(frames)] < end - 1e-6:
            frames.append(last)
    except SampleError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise SampleError(f"corrupt or truncated video: {exc}") from None
    finally:
        container.close()
    if len(frames) < cfg.num_frames:
        have = "no decodable frames" if last is None else f"only {len(frames)} frames"
        raise SampleError(
            f"video too short: {have} at {cfg.fps} fps from {cfg.start_seconds} s, need {cfg.num_frames} "
            f"({cfg.num_frames / cfg.fps:.2f} s); lower video.num_frames or video.fps"
        )
    return np.stack(frames), info


def _frame_to_array(frame, image_cfg: ImageConfig) -> np.ndarray:
    image = frame.to_image()  # RGB PIL image
    if min(image.size) < image_cfg.min_size:
        raise SampleError(f"video is {image.size[0]}x{image.size[1]}, smaller than image.min_size={image_cfg.min_size}")
    return square_resize(image, image_cfg.size)


def _duration_seconds(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return None


def read_caption(media_path: Path, required: bool) -> tuple[str, dict]:
    """Sidecar caption of `x.jpg`: `x.txt` (UTF-8 text) or `x.json` ({"caption": ...} or
    {"text": ...}; other keys go to meta)."""
    txt, js = media_path.with_suffix(".txt"), media_path.with_suffix(".json")
    if txt.is_file():
        return decode_caption(txt.read_bytes(), txt.name, required), {}
    if js.is_file():
        try:
            data = json.loads(js.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise SampleError(f"caption file {js.name} is not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise SampleError(f"caption file {js.name} is not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise SampleError(f"caption file {js.name} must hold a JSON object with a 'caption' key")
        caption = data.pop("caption", data.pop("text", None))
        if not isinstance(caption, str):
            caption = ""
        return check_caption(caption, js.name, required), data
    if required:
        raise SampleError(f"missing caption: no {txt.name} or {js.name} (set source.require_caption=false to keep it)")
    return "", {}


def decode_caption(data: bytes | str | None, where: str, required: bool) -> str:
    if data is None:
        return check_caption("", where, required)
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise SampleError(f"caption in {where} is not UTF-8") from None
    return check_caption(data, where, required)


def check_caption(caption: str, where: str, required: bool) -> str:
    caption = caption.lstrip("\ufeff").strip()
    if required and not caption:
        raise SampleError(f"missing caption: {where} is empty (set source.require_caption=false to keep it)")
    return caption


__all__ = ["decode_image", "decode_video", "read_caption", "decode_caption", "check_caption", "square_resize"]

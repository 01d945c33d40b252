"""Short clips of one colored shape moving left, right, up or down, written as real mp4 files.

The clips exercise the video path end to end (decode, frame sampling, tokenization) with data
whose caption is exact: "a red circle moving right". Each clip is a pure function of
(seed, index); `materialize` writes them to disk once, with caption and meta sidecars.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
from rich.progress import track

from core.errors import DataError
from core.files import atomic_path, write_text_atomic
from data_prep.builtin.shapes import COLORS, MIN_IMAGE_SIZE, MIN_OBJECT_SIZE, SHAPES, ShapeObject, render_objects

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Unit step of the object's box corner per direction, in (x, y) image coordinates (y down).
_STEPS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# Salt for the rng: clip (seed, index) must not replay the still image of the same (seed, index).
_STREAM = 0x6D6F7665
_PROGRESS_MIN = 50


def moving_clip(seed: int, index: int, image_size: int = 32,
                num_frames: int = 8) -> tuple[np.ndarray, str, dict]:
    """Clip `index` for `seed`: (frames uint8 (T, H, W, 3), caption, meta), deterministic."""
    if seed < 0 or index < 0:
        raise DataError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise DataError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size}")
    if num_frames < 2:
        raise DataError(f"num_frames must be >= 2 for motion to be visible, got {num_frames}")
    rng = np.random.default_rng([seed, index, _STREAM])
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    size = int(rng.integers(max(MIN_OBJECT_SIZE, round(0.26 * image_size)),
                            max(MIN_OBJECT_SIZE, round(0.34 * image_size)) + 1))
    room = image_size - 2 - size  # corner positions 1 .. image_size - 1 - size keep a margin
    # Travel at least ~a third of the image so the motion is unmistakable, even after encoding.
    travel = int(rng.integers(min(room, max(num_frames - 1, round(0.35 * image_size))), room + 1))
    start_along = int(rng.integers(1, room - travel + 2))
    across = int(rng.integers(1, room + 2))
    step_x, step_y = _STEPS[direction]
    # Moving left/up starts at the far end of the track.
    if step_x + step_y < 0:
        start_along += travel
    objects, centers = [], []
    for t in range(num_frames):
        along = start_along + (step_x + step_y) * round(travel * t / (num_frames - 1))
        x0, y0 = (along, across) if step_x else (across, along)
        objects.append(ShapeObject(shape=shape, color=color, cx=x0 + size / 2, cy=y0 + size / 2,
                                   size=float(size)))
        centers.append([x0 + size / 2, y0 + size / 2])
    frames = np.stack([render_objects([obj], image_size) for obj in objects])
    caption = f"a {color} {shape} moving {direction}"
    meta = {"kind": "moving", "shape": shape, "color": color, "direction": direction,
            "size": float(size), "centers": centers, "caption": caption, "seed": int(seed),
            "index": int(index), "image_size": int(image_size), "num_frames": int(num_frames)}
    return frames, caption, meta


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> None:
    """Encode frames uint8 (T, H, W, 3) as H.264 yuv420p mp4, atomically (temp file + rename)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
        raise DataError(f"frames must have shape (T, H, W, 3) with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise DataError(f"frames must be uint8, got {frames.dtype}; scale to 0-255 and cast")
    if int(fps) != fps or fps < 1:
        raise DataError(f"fps must be a positive integer, got {fps}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise DataError(f"yuv420p needs even frame sizes, got {width}x{height}; crop or pad by "
                        f"one pixel")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # unique: concurrent writers never share a temporary file (not mkstemp: its 0600 mode
        # would survive the rename and hide clips from other users)
        with atomic_path(path, unique=True) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            # Near-lossless: tiny frames cost nothing, and tests compare decoded colors.
            stream.options = {"crf": "10", "preset": "medium"}
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                         format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    except av.FFmpegError as exc:
        raise DataError(f"could not encode {path} with libx264 ({exc}); check that the installed "
                        f"PyAV wheel includes libx264 and the directory is writable") from exc



def materialize(out_dir: str | Path, seed: int, count: int, image_size: int = 32,
                num_frames: int = 8, fps: int = 8) -> list[Path]:
    """Write clip-{index:06d}.mp4/.txt/.json for indices 0..count-1; existing files are kept.

    Idempotent: a second call with the same arguments writes nothing. Returns the mp4 paths in
    index order.
    """
    if count < 0:
        raise DataError(f"count must be >= 0, got {count}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = range(count)
    if count > _PROGRESS_MIN:
        indices = track(indices, description=f"writing {count} clips to {out}")
    paths = []
    for index in indices:
        stem = out / f"clip-{index:06d}"
        mp4, txt, meta_path = (stem.with_suffix(ext) for ext in (".mp4", ".txt", ".json"))
        paths.append(mp4)
        if mp4.exists() and txt.exists() and meta_path.exists():
            continue
        frames, caption, meta = moving_clip(seed, index, image_size, num_frames)
        meta["fps"] = int(fps)
        if not mp4.exists():
            write_mp4(frames, mp4, fps)
        if not txt.exists():
            write_text_atomic(txt, caption, unique=True)  # exact caption, no newline
        if not meta_path.exists():
            write_text_atomic(meta_path, json.dumps(meta, sort_keys=True) + "\n", unique=True)
    return paths


def parse_motion(caption: str) -> tuple[str, str, str] | None:
    """"a red circle moving left" -> ("red", "circle", "left"); None for anything else."""
    words = caption.lower().strip().rstrip(".").split()
    if len(words) != 5 or words[0] not in ("a", "an") or words[3] != "moving":
        return None
    color, shape, direction = words[1], words[2], words[4]
    if color not in COLORS or shape not in SHAPES or direction not in DIRECTIONS:
        return None
    return color, shape, direction


def score_clip(frames: np.ndarray, caption: str) -> dict[str, bool]:
    """Read a clip (T, H, W, 3) uint8 back against its caption: the largest object of its first
    and last frames has the caption's colour and shape, and its centroid moved in the caption's
    direction (the larger axis of the displacement, at least a tenth of the frame)."""
    from data_prep.builtin.attributes import read_objects

    truth = parse_motion(caption)
    if truth is None:
        raise DataError(f"{caption!r} is not a moving-shapes caption ('a red circle moving left')")
    color, shape, direction = truth
    first, last = (read_objects(frames[i]) for i in (0, -1))
    if not first or not last:
        return {"object": False, "color": False, "direction": False, "overall": False}
    a, b = first[0], last[0]
    dx, dy = b.cx - a.cx, b.cy - a.cy
    moved = max(abs(dx), abs(dy)) >= frames.shape[2] / 10
    seen = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    result = {"object": a.shape == shape and b.shape == shape, "color": a.color == color and b.color == color,
              "direction": moved and seen == direction}
    return result | {"overall": all(result.values())}

"""Tests for moving-shape clips: determinism, motion, mp4 round trip and idempotent writing."""

import json

import av
import numpy as np
import pytest

from core.errors import DataError
from data_prep.builtin.attributes import read_objects
from data_prep.builtin.moving_shapes import DIRECTIONS, materialize, moving_clip, write_mp4
from data_prep.builtin.shapes import COLORS, SHAPES

_AXIS = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}  # (axis, sign)


def _decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame.max(axis=2) > 100)
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("image_size", (32, 64))
def test_clip_is_deterministic_and_moves_as_captioned(image_size):
    directions = set()
    for index in range(40):
        frames, caption, meta = moving_clip(3, index, image_size)
        again = moving_clip(3, index, image_size)
        assert np.array_equal(frames, again[0]) and caption == again[1] and meta == again[2]
        assert frames.shape == (8, image_size, image_size, 3) and frames.dtype == np.uint8
        assert caption == f"a {meta['color']} {meta['shape']} moving {meta['direction']}"
        assert meta["color"] in COLORS and meta["shape"] in SHAPES
        directions.add(meta["direction"])
        axis, sign = _AXIS[meta["direction"]]
        centers = np.array(meta["centers"])
        steps = sign * np.diff(centers[:, axis])
        assert (steps > 0).all() and np.ptp(centers[:, 1 - axis]) == 0
        assert steps.sum() >= 0.3 * image_size - 1  # the shape travels a good part of the frame
        half = meta["size"] / 2
        assert centers.min() - half >= 1 and centers.max() + half <= image_size - 1
        seen = []
        for frame in frames:
            (obj,) = read_objects(frame)
            assert (obj.shape, obj.color) == (meta["shape"], meta["color"])
            seen.append([obj.cx, obj.cy])
        # Centroids (a triangle's sits below its box center) move exactly as the box centers.
        assert np.allclose(np.diff(seen, axis=0), np.diff(centers, axis=0), atol=1e-6)
    assert directions == set(DIRECTIONS)


def test_mp4_round_trip(tmp_path):
    for index in range(8):
        frames, _, meta = moving_clip(0, index, 32, num_frames=8)
        path = tmp_path / f"c{index}.mp4"
        write_mp4(frames, path, fps=8)
        decoded = _decode(path)
        assert decoded.shape == frames.shape
        error = np.abs(decoded.astype(np.int16) - frames.astype(np.int16)).mean()
        assert error < 4.0, error
        axis, sign = _AXIS[meta["direction"]]
        positions = np.array([_centroid(f)[axis] for f in decoded])
        assert (sign * np.diff(positions) > 0).all(), positions
        # The object keeps its color through yuv420p: the reader sees the same thing.
        objs = read_objects(decoded[0])
        assert [(o.color, o.shape) for o in objs] == [(meta["color"], meta["shape"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"c{i}.mp4" for i in range(8)]


def test_write_mp4_rejects_bad_frames_without_leaving_files(tmp_path):
    with pytest.raises(DataError, match="even"):
        write_mp4(np.zeros((4, 31, 32, 3), np.uint8), tmp_path / "odd.mp4")
    with pytest.raises(DataError, match="uint8"):
        write_mp4(np.zeros((4, 32, 32, 3), np.float32), tmp_path / "float.mp4")
    with pytest.raises(DataError, match="shape"):
        write_mp4(np.zeros((32, 32, 3), np.uint8), tmp_path / "still.mp4")
    with pytest.raises(DataError, match="fps"):
        write_mp4(np.zeros((4, 32, 32, 3), np.uint8), tmp_path / "fps.mp4", fps=0)
    with pytest.raises(DataError, match="num_frames"):
        moving_clip(0, 0, num_frames=1)
    assert list(tmp_path.iterdir()) == []


def test_materialize_is_idempotent(tmp_path):
    out = tmp_path / "clips"
    paths = materialize(out, seed=5, count=6)
    assert paths == [out / f"clip-{i:06d}.mp4" for i in range(6)]
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 18 and not [n for n in names if n.startswith(".")]
    for index, path in enumerate(paths):
        _, caption, meta = moving_clip(5, index)
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == caption
        stored = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        assert stored["direction"] == meta["direction"] and stored["centers"] == meta["centers"]
        assert _decode(path).shape == (8, 32, 32, 3)
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert materialize(out, seed=5, count=6) == paths
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    # A lost sidecar is written again, and only it.
    paths[2].with_suffix(".txt").unlink()
    materialize(out, seed=5, count=6)
    assert paths[2].with_suffix(".txt").exists()
    assert paths[2].stat().st_mtime_ns == stamps[paths[2]]


def test_materialize_with_progress_bar(tmp_path):
    paths = materialize(tmp_path, seed=1, count=51, image_size=32, num_frames=4, fps=4)
    assert len(paths) == 51 and all(p.exists() for p in paths)
    assert _decode(paths[-1]).shape == (4, 32, 32, 3)

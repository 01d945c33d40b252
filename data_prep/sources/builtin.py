"""The built-in datasets as sources (no downloads): `shapes`, `moving_shapes` (real mp4 files read
back through the video-folder path), `digits` and `photos`; plus `npy`, a pre-decoded uint8 array."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Iterator

import numpy as np

from core.errors import DataError, SampleError
from data_prep.config import SourceConfig
from data_prep.media import check_caption, square_resize
from data_prep.sources.base import BatchSource, Item, Media, Sample, SampleFailure, Source
from data_prep.sources.folders import VideoFolderSource


class ShapesSource(Source):
    """`source.limit` procedurally rendered scenes, deterministic in (source.seed, index)."""

    def list_items(self) -> Iterator[Item]:
        for index in range(self.cfg.limit):
            yield Item(f"shapes-{self.cfg.seed}-{index:07d}", "image", index)

    def load(self, item: Item) -> Sample:
        from data_prep.builtin.shapes import shapes_sample

        pixels, caption, meta = shapes_sample(self.cfg.seed, item.ref, self.media.image.size, self.cfg.scene_weights)
        return Sample(item.key, "image", caption, pixels, meta)


class MovingShapesSource(VideoFolderSource):
    """Clips of moving shapes, first written as real mp4 files (plus caption sidecars) under the
    cache folder, then decoded like any user video."""

    def __init__(self, cfg: SourceConfig, media: Media, cache_dir: Path):
        size, frames, fps = media.image.size, media.video.num_frames, media.video.fps
        folder = Path(cache_dir) / f"moving_shapes-seed{cfg.seed}-{size}px-{frames}f-{fps:g}fps"
        super().__init__(SourceConfig(**{**cfg.__dict__, "kind": "videofolder", "path": str(folder)}), media)
        self.generated = cfg

    def list_items(self) -> Iterator[Item]:
        from data_prep.builtin.moving_shapes import materialize

        video = self.media.video
        materialize(self.cfg.path, self.generated.seed, self.generated.limit, self.media.image.size,
                    video.num_frames, int(round(video.fps)))
        for item in super().list_items():
            if int(item.key.rsplit("-", 1)[-1]) < self.generated.limit:  # a larger earlier run may share the cache
                yield item


class TableOfSamples(Source):
    """Base for small in-memory built-in sets given as (key, image, caption, meta) tuples."""

    _rows: list | None = None

    @abc.abstractmethod
    def samples(self) -> list[tuple[str, np.ndarray, str, dict]]:
        """All (key, uint8 image, caption, meta) tuples of the set."""

    def rows(self) -> list[tuple[str, np.ndarray, str, dict]]:
        if self._rows is None:  # built once per worker, not once per sample
            self._rows = self.samples()
        return self._rows

    def list_items(self) -> Iterator[Item]:
        rows = self.rows()
        for index, (key, *_rest) in enumerate(rows):
            yield Item(key, "image", index)

    def load(self, item: Item) -> Sample:
        key, image, caption, meta = self.rows()[item.ref]
        pixels = image if image.shape[0] == self.media.image.size else square_resize(_pil(image), self.media.image.size)
        return Sample(key, "image", caption, pixels, meta)


class DigitsSource(TableOfSamples):
    """scikit-learn's 8x8 digits, upscaled, captioned "the digit seven"."""

    def samples(self):
        from data_prep.builtin.natural import digits_samples

        return digits_samples(self.media.image.size)


class PhotosSource(TableOfSamples):
    """The photos that ship inside scikit-image (tokenizer sanity on natural images)."""

    def samples(self):
        from data_prep.builtin.natural import photo_samples

        return photo_samples(self.media.image.size)


class NpySource(BatchSource):
    """A `.npy` array of images, uint8 (N, H, W, 3), with optional captions one per line in a
    sidecar `<name>.txt`. Memory-mapped, so only the rows a worker needs are read."""

    def _array(self) -> np.ndarray:
        path = Path(self.cfg.path)
        if not path.is_file():
            raise DataError(f"source.path={self.cfg.path!r} is not a .npy file")
        try:
            array = np.load(path, mmap_mode="r")
        except ValueError as exc:
            raise DataError(f"{path} is not a readable .npy array: {exc}") from None
        if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
            raise DataError(f"{path} holds {array.dtype} {array.shape}; expected uint8 (N, H, W, 3) images")
        return array

    def _captions(self) -> list[str] | None:
        side = Path(self.cfg.path).with_suffix(".txt")
        return side.read_text(encoding="utf-8").splitlines() if side.is_file() else None

    def list_items(self) -> Iterator[Item]:
        count = len(self._array())
        stem = Path(self.cfg.path).stem
        for index in range(count):
            yield Item(f"{stem}-{index:08d}", "image", index)

    def load_batch(self, items):
        array, captions = self._array(), self._captions()
        results = []
        size = self.media.image.size
        for item in items:
            image = np.asarray(array[item.ref])
            caption = captions[item.ref] if captions and item.ref < len(captions) else ""
            try:
                caption = check_caption(caption, f"{Path(self.cfg.path).name} row {item.ref}", self.cfg.require_caption)
            except SampleError as exc:
                results.append(SampleFailure(item.key, str(exc), item.ref))
                continue
            pixels = image if image.shape[:2] == (size, size) else square_resize(_pil(image), size)
            results.append(Sample(item.key, "image", caption, pixels, {"source": f"{self.cfg.path}[{item.ref}]"}))
        return results


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)

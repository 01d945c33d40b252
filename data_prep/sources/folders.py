"""Folders of images or videos with sidecar captions (`x.jpg` + `x.txt` or `x.json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from data_prep.media import decode_image, decode_video, read_caption
from data_prep.sources.base import Item, Sample, Source, list_files, relative_key

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")


class _MediaFolderSource(Source):
    """Every media file below `source.path`; key = relative path without extension."""

    modality = "image"
    suffixes: tuple[str, ...] = IMAGE_SUFFIXES

    def list_items(self) -> Iterator[Item]:
        root, files = list_files(self.cfg.path, self.suffixes, f"{self.modality}s")
        for path in files:
            yield Item(relative_key(root, path), self.modality, str(path))

    def load(self, item: Item) -> Sample:
        path = Path(item.ref)
        caption, extra = read_caption(path, self.cfg.require_caption)
        pixels, info = self.decode(path)
        return Sample(item.key, self.modality, caption, pixels, {"source": str(path), **info, **extra})

    def decode(self, path: Path) -> tuple[np.ndarray, dict]:
        return decode_image(path, self.media.image)


class ImageFolderSource(_MediaFolderSource):
    """Images (jpg, png, webp, gif, bmp, tiff), center-cropped and resized to `image.size`."""


class VideoFolderSource(_MediaFolderSource):
    """Videos, cut into one clip of `video.num_frames` frames at `video.fps` (see
    data_prep.media.decode_video)."""

    modality = "video"
    suffixes = VIDEO_SUFFIXES

    def decode(self, path: Path) -> tuple[np.ndarray, dict]:
        return decode_video(path, self.media.video, self.media.image)

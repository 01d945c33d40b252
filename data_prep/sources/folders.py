"""Folders of images or videos with sidecar captions (`x.jpg` + `x.txt` or `x.json`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from data_prep.media import decode_image, decode_video, read_caption
from data_prep.sources.base import Item, Sample, Source, list_files, relative_key

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")


class ImageFolderSource(Source):
    """Every image file below `source.path`; key = relative path without extension."""

    def list_items(self) -> Iterator[Item]:
        root, files = list_files(self.cfg.path, IMAGE_SUFFIXES, "images")
        for path in files:
            yield Item(relative_key(root, path), "image", str(path))

    def load(self, item: Item) -> Sample:
        path = Path(item.ref)
        caption, extra = read_caption(path, self.cfg.require_caption)
        pixels, info = decode_image(path, self.media.image)
        return Sample(item.key, "image", caption, pixels, {"source": str(path), **info, **extra})


class VideoFolderSource(Source):
    """Every video file below `source.path`, cut into one clip of `video.num_frames` frames at
    `video.fps` (see data_prep.media.decode_video)."""

    def list_items(self) -> Iterator[Item]:
        root, files = list_files(self.cfg.path, VIDEO_SUFFIXES, "videos")
        for path in files:
            yield Item(relative_key(root, path), "video", str(path))

    def load(self, item: Item) -> Sample:
        path = Path(item.ref)
        caption, extra = read_caption(path, self.cfg.require_caption)
        frames, info = decode_video(path, self.media.video, self.media.image)
        return Sample(item.key, "video", caption, frames, {"source": str(path), **info, **extra})

"""Sources: where samples come from. `build_source(cfg, media, cache_dir)` picks one by
`source.kind`; every source lists items cheaply and loads them in batches (see base.py)."""

from __future__ import annotations

from pathlib import Path

from data_prep.config import ImageConfig, SourceConfig, VideoConfig
from data_prep.sources.base import Item, Media, Sample, SampleFailure, Source
from data_prep.sources.builtin import DigitsSource, MovingShapesSource, NpySource, PhotosSource, ShapesSource
from data_prep.sources.folders import ImageFolderSource, VideoFolderSource
from data_prep.sources.tables import HFDiskSource, ParquetSource
from data_prep.sources.text import TextSource
from data_prep.sources.webdataset_source import WebDatasetSource

SOURCES: dict[str, type[Source]] = {
    "shapes": ShapesSource,
    "digits": DigitsSource,
    "photos": PhotosSource,
    "imagefolder": ImageFolderSource,
    "videofolder": VideoFolderSource,
    "parquet": ParquetSource,
    "hf": HFDiskSource,
    "webdataset": WebDatasetSource,
    "text": TextSource,
    "npy": NpySource,
}


def build_source(cfg: SourceConfig, image: ImageConfig, video: VideoConfig, cache_dir: str | Path) -> Source:
    media = Media(image, video)
    if cfg.kind == "moving_shapes":
        return MovingShapesSource(cfg, media, Path(cache_dir))
    return SOURCES[cfg.kind](cfg, media)


__all__ = ["build_source", "Item", "Media", "Sample", "SampleFailure", "Source", "SOURCES"]

"""What every source provides: a cheap, deterministic listing of items and a loader that turns a
batch of items into decoded samples (or per-sample errors).

Listing is separate from loading so prep can split the work into fixed units (one shard each)
before reading any pixels, and so a rerun after a crash assigns every item to the same unit.
"""

from __future__ import annotations

import abc
import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from core.errors import DataError, SampleError
from data_prep.config import GENERATED_SOURCES, ImageConfig, SourceConfig, VideoConfig


@dataclass(frozen=True)
class Item:
    """One sample to load: a stable key, its modality and a JSON-able reference (path, row, ...)."""

    key: str
    modality: str  # "image" | "video" | "text"
    ref: Any


@dataclass
class Sample:
    """A decoded sample. `pixels` is uint8 (H, W, 3) for images and (T, H, W, 3) for videos."""

    key: str
    modality: str
    caption: str = ""
    pixels: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class SampleFailure:
    """A sample that could not be used, and why (one line of errors.jsonl)."""

    key: str
    reason: str
    ref: Any = None

    def __post_init__(self) -> None:
        self.reason = " ".join(str(self.reason).split())  # one line per record, whatever the library said


LoadResult = Sample | SampleFailure


@dataclass
class Media:
    """The decode settings every loader receives."""

    image: ImageConfig
    video: VideoConfig


class Source(abc.ABC):
    """Base class. Subclasses implement `items` and `load` (or `load_batch` when a batch can be
    read more cheaply together, e.g. Parquet row groups or tar members)."""

    def __init__(self, cfg: SourceConfig, media: Media):
        self.cfg = cfg
        self.media = media
        self.listing_errors: list[SampleFailure] = []

    def items(self) -> Iterator[Item]:
        """Every item of the source, in a deterministic order. Problems found while listing
        (an unreadable tar or Parquet file) are collected in `listing_errors`."""
        self.listing_errors = []
        if self.cfg.kind in GENERATED_SOURCES or not self.cfg.limit:
            yield from self.list_items()  # generated sources make exactly `limit` samples themselves
        else:
            yield from itertools.islice(self.list_items(), self.cfg.limit)

    @abc.abstractmethod
    def list_items(self) -> Iterator[Item]:
        """The source's own listing (see `items`)."""

    @abc.abstractmethod
    def load(self, item: Item) -> Sample:
        """Decode one item; raise SampleError with a reason when it cannot be used."""

    def load_batch(self, items: list[Item]) -> list[LoadResult]:
        return [self.load_safely(item) for item in items]

    def load_safely(self, item: Item) -> LoadResult:
        try:
            return self.load(item)
        except SampleError as exc:
            return SampleFailure(item.key, str(exc), item.ref)


class BatchSource(Source):
    """A source whose natural unit of reading is several items at once (a file, a row group, a
    tar): subclasses implement `load_batch`; `load` of one item goes through it."""

    def load(self, item: Item) -> Sample:
        result = self.load_batch([item])[0]
        if isinstance(result, SampleFailure):
            raise SampleError(result.reason)
        return result

    @abc.abstractmethod
    def load_batch(self, items: list[Item]) -> list[LoadResult]:
        """Results aligned with `items`: a Sample or a SampleFailure each."""


def group_by_file(items: list[Item]) -> dict[str, list[Item]]:
    """Items whose `ref` starts with a file path, grouped so each file is opened once."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        groups[item.ref[0]].append(item)
    return groups


def list_files(root: str, suffixes: tuple[str, ...], what: str) -> tuple[Path, list[Path]]:
    """Files under `root` (a folder, searched recursively, or a single file) with one of the
    suffixes, sorted so the listing is deterministic."""
    path = Path(root).expanduser()
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise DataError(f"source.path={root!r} does not exist; point it at a folder of {what}")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"no {what} ({', '.join(suffixes)}) found under {root!r}")
    return path, files


def relative_key(root: Path, path: Path) -> str:
    """Key of a file: its path below the source root, without the extension."""
    return path.relative_to(root).with_suffix("").as_posix()

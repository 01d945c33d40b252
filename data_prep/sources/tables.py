"""Tabular sources: Parquet files and Hugging Face `datasets` saved on local disk, with an image
column (raw bytes, or HF's {"bytes", "path"} struct) and a caption column."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import DataError, SampleError
from data_prep.media import decode_caption, decode_image
from data_prep.sources.base import BatchSource, Item, LoadResult, Sample, SampleFailure, list_files


def image_bytes(value: Any) -> bytes:
    """The encoded image in a table cell: bytes, or HF Image's {"bytes": ..., "path": ...}."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            try:
                return Path(value["path"]).read_bytes()
            except OSError as exc:
                raise SampleError(f"image path {value['path']!r} in the table cannot be read: {exc.strerror}") from None
        raise SampleError("image cell holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value is None:
        raise SampleError("image cell is empty")
    raise SampleError(f"image cell has type {type(value).__name__}, expected encoded image bytes")


class ParquetSource(BatchSource):
    """`*.parquet` files under `source.path`. Rows are read a row group at a time."""

    def _columns(self, schema: pa.Schema, path: Path) -> list[str]:
        wanted = [self.cfg.image_column, self.cfg.caption_column] + ([self.cfg.key_column] if self.cfg.key_column else [])
        missing = [c for c in wanted if c not in schema.names]
        if self.cfg.caption_column in missing and not self.cfg.require_caption:
            missing.remove(self.cfg.caption_column)
        if missing:
            raise DataError(
                f"{path} has no column {missing[0]!r}; its columns are {', '.join(schema.names)} "
                "(set source.image_column / source.caption_column / source.key_column)"
            )
        return [c for c in wanted if c in schema.names]

    def list_items(self) -> Iterator[Item]:
        root, files = list_files(self.cfg.path, (".parquet",), "Parquet files")
        for path in files:
            try:
                meta = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as exc:
                self.listing_errors.append(SampleFailure(str(path), f"unreadable Parquet file: {exc}"))
                continue
            self._columns(meta.schema_arrow, path)
            keys = None
            if self.cfg.key_column:
                keys = meta.read(columns=[self.cfg.key_column]).column(0).to_pylist()
            row = 0
            for group in range(meta.num_row_groups):
                for offset in range(meta.metadata.row_group(group).num_rows):
                    key = str(keys[row]) if keys is not None else f"{path.relative_to(root).as_posix()}:{row}"
                    yield Item(key, "image", [str(path), group, offset])
                    row += 1

    def load_batch(self, items: list[Item]) -> list[LoadResult]:
        by_group = defaultdict(list)
        for item in items:
            by_group[(item.ref[0], item.ref[1])].append(item)
        results: dict[str, LoadResult] = {}
        for (path, group), group_items in by_group.items():
            try:
                rows = self._read_group(path, group)
            except (pa.ArrowInvalid, OSError) as exc:
                for item in group_items:
                    results[item.key] = SampleFailure(item.key, f"unreadable row group: {exc}", item.ref)
                continue
            for item in group_items:
                try:
                    results[item.key] = self._to_sample(item, rows[item.ref[2]])
                except SampleError as exc:
                    results[item.key] = SampleFailure(item.key, str(exc), item.ref)
        return [results[item.key] for item in items]

    def _read_group(self, path: str, group: int) -> list[dict]:
        file = pq.ParquetFile(path)
        return file.read_row_group(group, columns=self._columns(file.schema_arrow, Path(path))).to_pylist()

    def _to_sample(self, item: Item, row: dict) -> Sample:
        caption = decode_caption(row.get(self.cfg.caption_column), f"column {self.cfg.caption_column!r}", self.cfg.require_caption)
        pixels, info = decode_image(image_bytes(row[self.cfg.image_column]), self.media.image)
        return Sample(item.key, "image", caption, pixels, {"source": f"{item.ref[0]}#{item.ref[1]}:{item.ref[2]}", **info})


class HFDiskSource(BatchSource):
    """A Hugging Face dataset written with `Dataset.save_to_disk` (or a DatasetDict: its `train`
    split). Loaded offline; image columns are read undecoded so bad images become error records."""

    def _dataset(self):
        import datasets

        datasets.disable_progress_bars()
        try:
            ds = datasets.load_from_disk(self.cfg.path)
        except FileNotFoundError as exc:
            raise DataError(f"source.path={self.cfg.path!r} is not a dataset saved with save_to_disk ({exc})") from None
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"dataset at {self.cfg.path} has splits {list(ds)}; save one split or a 'train' split")
            ds = ds["train"]
        if self.cfg.image_column not in ds.column_names:
            raise DataError(
                f"dataset at {self.cfg.path} has no column {self.cfg.image_column!r}; columns: "
                f"{', '.join(ds.column_names)} (set source.image_column)"
            )
        if isinstance(ds.features[self.cfg.image_column], datasets.Image):
            ds = ds.cast_column(self.cfg.image_column, datasets.Image(decode=False))
        return ds

    def list_items(self) -> Iterator[Item]:
        ds = self._dataset()
        keys = ds[self.cfg.key_column] if self.cfg.key_column else None
        for index in range(len(ds)):
            yield Item(str(keys[index]) if keys is not None else f"row-{index:09d}", "image", index)

    def load_batch(self, items: list[Item]) -> list[LoadResult]:
        ds = self._dataset().select([item.ref for item in items])
        results: list[LoadResult] = []
        for item, row in zip(items, ds):
            try:
                caption = decode_caption(row.get(self.cfg.caption_column), f"column {self.cfg.caption_column!r}",
                                         self.cfg.require_caption)
                pixels, info = decode_image(image_bytes(row[self.cfg.image_column]), self.media.image)
                results.append(Sample(item.key, "image", caption, pixels, {"source": f"row {item.ref}", **info}))
            except SampleError as exc:
                results.append(SampleFailure(item.key, str(exc), item.ref))
        return results

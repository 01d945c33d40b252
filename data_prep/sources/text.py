"""Text-only corpora (a multimodal LLM keeps training on plain text): `.txt` files (one document
per line, or per file), `.jsonl` files (one JSON object per line, text under `source.text_column`)
and Parquet files (a text column). Documents are tokenised into the same shards as captions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import SampleError
from data_prep.media import check_caption
from data_prep.sources.base import BatchSource, Item, LoadResult, Sample, SampleFailure, group_by_file, list_files

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


class TextSource(BatchSource):
    def list_items(self) -> Iterator[Item]:
        root, files = list_files(self.cfg.path, TEXT_SUFFIXES, "text files")
        for path in files:
            rel = path.relative_to(root).as_posix()
            try:
                indices = self._document_indices(path)
            except (OSError, pa.ArrowInvalid) as exc:
                self.listing_errors.append(SampleFailure(str(path), f"unreadable text file: {exc}"))
                continue
            whole_file = path.suffix == ".txt" and self.cfg.text_unit == "file"
            for index in indices:
                yield Item(rel if whole_file else f"{rel}:{index}", "text", [str(path), index])

    def _document_indices(self, path: Path) -> list[int]:
        """Rows of a Parquet file, the file itself, or its non-blank lines (blank lines separate
        documents; they are not bad input)."""
        if path.suffix == ".parquet":
            return list(range(pq.ParquetFile(path).metadata.num_rows))
        if path.suffix == ".txt" and self.cfg.text_unit == "file":
            return [0]
        with open(path, "rb") as f:
            return [i for i, line in enumerate(f) if line.strip()]

    def load_batch(self, items: list[Item]) -> list[LoadResult]:
        results: dict[str, LoadResult] = {}
        for path, file_items in group_by_file(items).items():
            try:
                docs = self._documents(Path(path))
            except (OSError, pa.ArrowInvalid) as exc:
                docs = None
                reason = f"unreadable text file: {exc}"
            for item in file_items:
                if docs is None:
                    results[item.key] = SampleFailure(item.key, reason, item.ref)
                    continue
                try:
                    text = self._document_text(docs[item.ref[1]], Path(path).name, item.ref[1])
                    results[item.key] = Sample(item.key, "text", text, None, {"source": f"{path}:{item.ref[1]}"})
                except SampleError as exc:
                    results[item.key] = SampleFailure(item.key, str(exc), item.ref)
        return [results[item.key] for item in items]

    def _documents(self, path: Path) -> list:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            if self.cfg.text_column not in table.column_names:
                raise pa.ArrowInvalid(
                    f"no column {self.cfg.text_column!r} (columns: {', '.join(table.column_names)}; set source.text_column)"
                )
            return table.column(self.cfg.text_column).to_pylist()
        data = path.read_bytes()
        if path.suffix == ".txt" and self.cfg.text_unit == "file":
            return [data]
        return data.splitlines()

    def _document_text(self, raw, file_name: str, index: int) -> str:
        where = f"{file_name} line {index + 1}"
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SampleError(f"{where} is not UTF-8") from None
            if file_name.endswith(".jsonl"):
                try:
                    obj = json.loads(raw) if raw.strip() else {}
                except json.JSONDecodeError as exc:
                    raise SampleError(f"{where} is not valid JSON: {exc.msg}") from None
                raw = obj.get(self.cfg.text_column) if isinstance(obj, dict) else None
                if not isinstance(raw, str):
                    raise SampleError(f"{where} has no string field {self.cfg.text_column!r} (set source.text_column)")
        if raw is None:
            raw = ""
        if not isinstance(raw, str):
            raise SampleError(f"{where}: text is {type(raw).__name__}, expected a string")
        return check_caption(raw, where, required=True).replace("\r", "")

"""Webdataset tar shards: members `<key>.jpg|png|...` with `<key>.txt` (or `.json`) captions.

Read with the standard `tarfile` module so a truncated or corrupt tar becomes error records for
its samples (and a listing error for the tar) instead of a crash inside a streaming reader.
"""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from core.errors import SampleError
from data_prep.media import check_caption, decode_caption, decode_image
from data_prep.sources.base import BatchSource, Item, LoadResult, Sample, SampleFailure, group_by_file, list_files

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


def split_member(name: str) -> tuple[str, str]:
    """webdataset convention: the key is everything before the first dot of the basename."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


class WebDatasetSource(BatchSource):
    def list_items(self) -> Iterator[Item]:
        root, tars = list_files(self.cfg.path, (".tar",), "webdataset .tar shards")
        for tar_path in tars:
            try:
                with tarfile.open(tar_path) as tar:
                    names = [m.name for m in tar.getmembers() if m.isfile()]
            except (tarfile.TarError, OSError, EOFError) as exc:
                self.listing_errors.append(SampleFailure(str(tar_path), f"unreadable tar: {exc}"))
                continue
            exts: dict[str, set[str]] = defaultdict(set)
            for name in names:
                key, ext = split_member(name)
                exts[key].add(ext)
            prefix = tar_path.relative_to(root).with_suffix("").as_posix()
            for key in sorted(exts):
                yield Item(f"{prefix}/{key}", "image", [str(tar_path), key])

    def load_batch(self, items: list[Item]) -> list[LoadResult]:
        results: dict[str, LoadResult] = {}
        for tar_path, tar_items in group_by_file(items).items():
            wanted = {item.ref[1] for item in tar_items}
            members: dict[str, dict[str, bytes]] = defaultdict(dict)
            try:
                with tarfile.open(tar_path) as tar:
                    for member in tar:
                        key, ext = split_member(member.name)
                        if member.isfile() and key in wanted:
                            members[key][ext] = tar.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError) as exc:
                # Samples read before the damage are still usable; the rest get error records.
                for item in tar_items:
                    if item.ref[1] not in members:
                        results[item.key] = SampleFailure(item.key, f"unreadable tar member: {exc}", item.ref)
            for item in tar_items:
                if item.key not in results:
                    results[item.key] = self._to_sample(item, members.get(item.ref[1], {}), Path(tar_path).name)
        return [results[item.key] for item in items]

    def _to_sample(self, item: Item, fields: dict[str, bytes], tar_name: str) -> LoadResult:
        try:
            image_ext = next((e for e in IMAGE_EXTS if e in fields), None)
            if image_ext is None:
                raise SampleError(f"no image member ({'/'.join(IMAGE_EXTS)}) for key {item.ref[1]!r} in {tar_name}")
            caption = self._caption(fields, f"{tar_name}:{item.ref[1]}")
            pixels, info = decode_image(fields[image_ext], self.media.image)
            return Sample(item.key, "image", caption, pixels, {"source": f"{tar_name}:{item.ref[1]}.{image_ext}", **info})
        except SampleError as exc:
            return SampleFailure(item.key, str(exc), item.ref)

    def _caption(self, fields: dict[str, bytes], where: str) -> str:
        if "json" in fields and "txt" not in fields and "caption" not in fields:
            try:
                data = json.loads(fields["json"].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SampleError(f"caption json in {where} is unreadable: {exc}") from None
            value = data.get("caption", data.get("text", "")) if isinstance(data, dict) else ""
            return check_caption(value if isinstance(value, str) else "", where, self.cfg.require_caption)
        raw = fields.get("txt", fields.get("caption"))
        return decode_caption(raw, where, self.cfg.require_caption)

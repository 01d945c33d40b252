"""The shard contract: one Parquet row per sample, plus `manifest.json`. Writer and reader both
import this module; change `SCHEMA_VERSION` whenever a column changes meaning.

Row columns
  key            stable sample key (unique across the whole dataset)
  modality       "image" | "video" | "text"
  caption        the caption (or document) as text, for people and for re-tokenising
  text_ids       list<int32> token ids of the caption / document (text tokenizer in the manifest)
  latent         raw bytes of the continuous latent (KL posterior mean), C-order, or null
  latent_logvar  raw bytes of the KL posterior log-variance, same shape, or null
  latent_shape   list<int32>: (C, h, w) for images, (T, C, h, w) for videos
  latent_dtype   numpy dtype name of latent / latent_logvar ("float32", "float16")
  codes          raw bytes of discrete codes (VQ / FSQ ids), or null
  codes_shape    list<int32>: (h, w) for images, (T, h, w) for videos
  codes_dtype    numpy dtype name of codes ("int16", "int32")
  meta           JSON object: source path, original size, ground-truth attributes, ...
  split          "train" | "val" (version 2; `split.val_fraction`, by a hash of the key).
                 Version 1 shards have no such column: every row is "train".

Raw bytes plus explicit shape and dtype keep the shards readable by plain pyarrow, HF datasets or
any Parquet reader, without Ray's tensor extension types.

Each shard also carries key-value metadata under `nodd` (JSON): schema version, tokenizer
fingerprints, row count per modality and per-channel latent sums for the manifest statistics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import DataError
from core.files import atomic_path, write_text_atomic

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no `split` column (every row trains)
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
SHARD_GLOB = "shard-*.parquet"
METADATA_KEY = b"nodd"

ARROW_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("modality", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("text_ids", pa.list_(pa.int32())),
        pa.field("latent", pa.binary()),
        pa.field("latent_logvar", pa.binary()),
        pa.field("latent_shape", pa.list_(pa.int32())),
        pa.field("latent_dtype", pa.string()),
        pa.field("codes", pa.binary()),
        pa.field("codes_shape", pa.list_(pa.int32())),
        pa.field("codes_dtype", pa.string()),
        pa.field("meta", pa.string()),
        pa.field("split", pa.string()),
    ]
)
COLUMNS = tuple(ARROW_SCHEMA.names)


def shard_name(unit: int) -> str:
    return f"shard-{unit:06d}.parquet"


def split_of(key: str, val_fraction: float) -> str:
    """"val" for a stable `val_fraction` of keys (the first 8 bytes of sha256(key) as a number
    in [0, 1)), else "train": the same key lands in the same split in every run."""
    if val_fraction <= 0:
        return "train"
    position = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2 ** 64
    return "val" if position < val_fraction else "train"


def shard_split_rows(shard: dict[str, Any], split: str) -> int:
    """Rows of `split` in a manifest shard entry or a shard's metadata (version 1: all "train")."""
    splits = shard.get("splits") or {"train": shard["rows"]}
    return int(splits.get(split, 0))


def array_to_bytes(array: np.ndarray) -> tuple[bytes, list[int], str]:
    array = np.ascontiguousarray(array)
    return array.tobytes(), list(array.shape), array.dtype.name


def bytes_to_array(data: bytes, shape: list[int], dtype: str) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


def decode_latent(row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """(mean, logvar) of a row's continuous latent; logvar is None for deterministic latents."""
    if row.get("latent") is None:
        raise DataError(f"sample {row.get('key')!r} has no continuous latent (prepared with a discrete tokenizer?)")
    mean = bytes_to_array(row["latent"], row["latent_shape"], row["latent_dtype"])
    logvar = row.get("latent_logvar")
    return mean, None if logvar is None else bytes_to_array(logvar, row["latent_shape"], row["latent_dtype"])


def decode_codes(row: dict[str, Any]) -> np.ndarray:
    if row.get("codes") is None:
        raise DataError(f"sample {row.get('key')!r} has no discrete codes (prepared with a KL tokenizer?)")
    return bytes_to_array(row["codes"], row["codes_shape"], row["codes_dtype"])


def empty_row(key: str, modality: str) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in COLUMNS}
    row.update(key=key, modality=modality, caption="", text_ids=[], meta="{}", split="train")
    return row


def rows_to_table(rows: list[dict[str, Any]], shard_meta: dict[str, Any]) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=ARROW_SCHEMA) if rows else ARROW_SCHEMA.empty_table()
    meta = {METADATA_KEY: json.dumps({"schema_version": SCHEMA_VERSION, **shard_meta}).encode()}
    return table.replace_schema_metadata(meta)


def write_shard(table: pa.Table, path: Path) -> None:
    """Atomic: a crash leaves either no shard or a whole one, never half a file."""
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_shard_meta(path: Path) -> dict[str, Any]:
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"shard {path} is not a readable Parquet file ({exc}); delete it and rerun prep") from None
    if METADATA_KEY not in raw:
        raise DataError(f"shard {path} has no nodd metadata: not written by nodd prep")
    return json.loads(raw[METADATA_KEY])


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    """`manifest.json`: everything a reader needs to trust and interpret the shards."""

    schema_version: int
    num_samples: int
    shards: list[dict[str, Any]]  # {"file", "rows", "sha256", "modalities", "splits"}
    tokenizer: dict[str, Any]  # {"kind", "fingerprint", "path", "latent_shape", ...} or {} for text-only
    text_tokenizer: dict[str, Any]  # {"name", "fingerprint", "vocab_size", "spec"}
    latent_stats: dict[str, Any]  # {"mean": [C], "std": [C], "count": n} over KL means
    errors: dict[str, Any]  # {"count", "by_reason"}
    prep_config: dict[str, Any]
    splits: dict[str, int] = field(default_factory=dict)  # rows per split (version 2; {} in version 1)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / MANIFEST
        write_text_atomic(path, json.dumps(self.__dict__, indent=2, sort_keys=False))
        return path

    @classmethod
    def read(cls, out_dir: str | Path) -> "Manifest":
        path = Path(out_dir) / MANIFEST
        if not path.is_file():
            raise DataError(f"{path} not found: {out_dir} is not a finished prep output (run `nodd prep` to completion)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = cls(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise DataError(f"{path} is corrupt ({exc}); rerun `nodd prep` with the same config to rewrite it") from None
        if manifest.schema_version not in READABLE_VERSIONS:
            raise DataError(
                f"{path} has shard schema version {manifest.schema_version}, this nodd reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; re-run prep with this version"
            )
        return manifest


def iter_rows(out_dir: str | Path, columns: list[str] | None = None):
    """Rows (dicts) of every shard listed in the manifest, in shard order. For tools and tests;
    the training loader streams batches itself."""
    manifest = Manifest.read(out_dir)
    for shard in manifest.shards:
        table = pq.read_table(Path(out_dir) / shard["file"], columns=columns)
        yield from table.to_pylist()

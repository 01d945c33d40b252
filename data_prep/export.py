"""Optional webdataset export of finished shards: `<out_dir>/wds/shard-NNNNNN.tar`, one tar per
Parquet shard, members per sample: `.json` (key, caption, text ids, meta), `.txt` (caption),
`.latent.npy` / `.logvar.npy` (continuous latents) or `.codes.npy` (discrete codes)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from core.files import atomic_path
from data_prep import schema


def wds_key(key: str) -> str:
    """webdataset splits member names at the first dot of the basename; keys must not hold dots."""
    return key.replace(".", "_")


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def export_webdataset(out_dir: Path, manifest: schema.Manifest) -> Path:
    import webdataset as wds

    target = out_dir / "wds"
    target.mkdir(exist_ok=True)
    for shard in manifest.shards:
        final = target / shard["file"].replace(".parquet", ".tar")
        with atomic_path(final) as tmp, wds.TarWriter(str(tmp)) as sink:
            for row in pq.read_table(out_dir / shard["file"]).to_pylist():
                sample = {"__key__": wds_key(row["key"]), "txt": row["caption"] or "",
                          "json": json.dumps({"key": row["key"], "modality": row["modality"], "caption": row["caption"],
                                              "text_ids": row["text_ids"], "meta": json.loads(row["meta"])})}
                if row["latent"] is not None:
                    mean, logvar = schema.decode_latent(row)
                    sample["latent.npy"] = _npy(mean)
                    if logvar is not None:
                        sample["logvar.npy"] = _npy(logvar)
                if row["codes"] is not None:
                    sample["codes.npy"] = _npy(schema.decode_codes(row))
                sink.write(sample)
    return target

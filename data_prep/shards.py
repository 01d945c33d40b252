"""`nodd shards verify DIR` and `nodd shards inspect DIR`.

verify: every shard in the manifest exists, matches its sha256 and row count, carries the
manifest's schema version and tokenizer fingerprints, and every key is unique; with
`--tokenizer PATH` the tokenizer there must be the one the shards were encoded with.
inspect: a summary, and a few samples decoded back to a PNG grid (and an mp4 per video) to look at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from core.errors import DataError
from data_prep import schema


def verify_shards(out_dir: str | Path, tokenizer_path: str | None = None) -> list[str]:
    """Every problem found, as one line each (empty list: the shards are good)."""
    out_dir = Path(out_dir)
    manifest = schema.Manifest.read(out_dir)
    problems: list[str] = []
    keys: set[str] = set()
    total = 0
    from rich.progress import track

    for shard in track(manifest.shards, description="verifying shards", transient=True):
        path = out_dir / shard["file"]
        if not path.is_file():
            problems.append(f"{shard['file']}: missing")
            continue
        if schema.sha256_file(path) != shard["sha256"]:
            problems.append(f"{shard['file']}: sha256 differs from the manifest (file changed or corrupt)")
            continue
        try:
            meta = schema.read_shard_meta(path)
            has_split = "split" in pq.read_schema(path).names
            table = pq.read_table(path, columns=["key", "split"] if has_split else ["key"])
        except (DataError, OSError) as exc:
            problems.append(f"{shard['file']}: {exc}")
            continue
        if table.num_rows != shard["rows"] or meta.get("rows") != shard["rows"]:
            problems.append(f"{shard['file']}: {table.num_rows} rows, manifest says {shard['rows']}")
        if meta.get("schema_version") != manifest.schema_version:
            problems.append(f"{shard['file']}: schema version {meta.get('schema_version')}, manifest {manifest.schema_version}")
        if meta.get("tokenizer_fingerprint", "") != manifest.tokenizer.get("fingerprint", ""):
            problems.append(f"{shard['file']}: encoded with tokenizer {meta.get('tokenizer_fingerprint')!r}, "
                            f"manifest names {manifest.tokenizer.get('fingerprint')!r}")
        if meta.get("text_tokenizer_fingerprint") != manifest.text_tokenizer.get("fingerprint"):
            problems.append(f"{shard['file']}: text tokenizer fingerprint differs from the manifest")
        if has_split:
            found = table.column("split").to_pylist()
            for name in schema.SPLITS:
                if found.count(name) != schema.shard_split_rows(shard, name):
                    problems.append(f"{shard['file']}: {found.count(name)} {name!r} rows, manifest says "
                                    f"{schema.shard_split_rows(shard, name)}")
        for key in table.column("key").to_pylist():
            if key in keys:
                problems.append(f"{shard['file']}: duplicate key {key!r}")
            keys.add(key)
        total += table.num_rows
    if not problems and total != manifest.num_samples:  # only meaningful when every shard was read
        problems.append(f"{total} rows in shards, manifest says {manifest.num_samples}")
    listed = {s["file"] for s in manifest.shards}
    for extra in sorted(p.name for p in out_dir.glob(schema.SHARD_GLOB) if p.name not in listed):
        problems.append(f"{extra}: shard not listed in the manifest")
    if tokenizer_path:
        from model.tokenizers import image_tokenizer_fingerprint

        found = image_tokenizer_fingerprint(tokenizer_path)
        if found != manifest.tokenizer.get("fingerprint"):
            problems.append(f"tokenizer at {tokenizer_path} has fingerprint {found[:12]}..., shards were encoded with "
                            f"{str(manifest.tokenizer.get('fingerprint'))[:12]}...")
    return problems


def summarize(out_dir: str | Path) -> dict:
    manifest = schema.Manifest.read(out_dir)
    modalities: dict[str, int] = {}
    for shard in manifest.shards:
        for name, count in shard["modalities"].items():
            modalities[name] = modalities.get(name, 0) + count
    return {
        "samples": manifest.num_samples, "shards": len(manifest.shards), "modalities": modalities,
        "splits": manifest.splits or {"train": manifest.num_samples},
        "tokenizer": {k: manifest.tokenizer.get(k) for k in ("kind", "latent_shape", "vocab_size", "info_budget")},
        "text_tokenizer": manifest.text_tokenizer.get("name"), "errors": manifest.errors,
        "latent_stats": {k: manifest.latent_stats.get(k) for k in ("mean", "std", "scale")} if manifest.latent_stats else {},
    }


def inspect_shards(out_dir: str | Path, count: int = 16, tokenizer_path: str | None = None) -> dict:
    """Decode the first `count` image samples into `<out_dir>/inspect/samples.png` (a grid with
    the caption of each in captions.txt) and the first video into `inspect/video-0.mp4`."""
    import torch

    from model.tokenizers import load_image_tokenizer

    out_dir = Path(out_dir)
    manifest = schema.Manifest.read(out_dir)
    path = tokenizer_path or manifest.tokenizer.get("path")
    if not path:
        raise DataError(f"{out_dir} holds text only; nothing to decode")
    tokenizer = load_image_tokenizer(path, manifest.prep_config["image"]["size"]).eval()
    images, captions, video = [], [], None
    has_video = any("video" in shard["modalities"] for shard in manifest.shards)
    for row in schema.iter_rows(out_dir):
        if row["modality"] == "image" and len(images) < count:
            images.append(_decode(tokenizer, row, torch))
            captions.append(f"{row['key']}\t{row['caption']}")
        elif row["modality"] == "video" and video is None:
            video = (_decode(tokenizer, row, torch), row)
        if len(images) >= count and (video is not None or not has_video):
            break
    inspect_dir = out_dir / "inspect"
    inspect_dir.mkdir(exist_ok=True)
    written = {}
    if images:
        written["png"] = str(save_grid(np.stack(images), inspect_dir / "samples.png"))
        (inspect_dir / "captions.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    if video is not None:
        from data_prep.builtin.moving_shapes import write_mp4

        frames, row = video
        write_mp4(frames, inspect_dir / "video-0.mp4", fps=int(round(manifest.prep_config["video"]["fps"])))
        save_grid(frames, inspect_dir / "video-0-frames.png")
        (inspect_dir / "video-0.txt").write_text(f"{row['key']}\t{row['caption']}\n", encoding="utf-8")
        written["mp4"] = str(inspect_dir / "video-0.mp4")
    return written


def _decode(tokenizer, row: dict, torch) -> np.ndarray:
    """One shard row back to uint8 pixels: (H, W, 3) or (T, H, W, 3)."""
    video = row["modality"] == "video"
    with torch.inference_mode():
        if row["codes"] is not None:
            codes = torch.from_numpy(schema.decode_codes(row).astype(np.int64))  # ([T,] h, w)
            x = tokenizer.decode_codes(codes if video else codes[None])  # frames decode as a batch
            x = x[None] if video else x
        else:
            mean, _ = schema.decode_latent(row)
            z = torch.from_numpy(mean.astype(np.float32))[None]
            x = tokenizer.decode_video(z) if video else tokenizer.decode(z)
    x = x[0].clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def save_grid(images: np.ndarray, path: Path, columns: int = 8) -> Path:
    """uint8 (N, H, W, 3) -> one PNG grid with a 2-pixel gap."""
    from PIL import Image

    n, h, w, _ = images.shape
    columns = min(columns, n)
    rows = (n + columns - 1) // columns
    grid = np.full((rows * (h + 2) + 2, columns * (w + 2) + 2, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + c * (w + 2):2 + c * (w + 2) + w] = image
    Image.fromarray(grid).save(path)
    return path


def format_summary(summary: dict) -> str:
    return json.dumps(summary, indent=2)

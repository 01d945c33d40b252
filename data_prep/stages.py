"""The three prep stages, as plain functions and one stateful class, so Ray Data and the
single-process path run the same code.

  decode_unit   (CPU task)   items of one unit -> decoded pixels, tokenised captions, failures
  UnitEncoder   (actor)      pixels -> latents (KL mean/logvar) or codes (VQ/FSQ), batched
  write_unit    (CPU task)   rows -> one Parquet shard (atomic) + that unit's error records

A unit is one future shard (`shard_size` items). Rows flowing between the stages are whole units
(pickled payloads of a few MB), which amortises Ray's per-row and per-batch overhead: on 2 cores a
row-per-image pipeline ran at about 0.3x a plain torch loop, a row-per-unit one near 1x
(bench/README.md).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.files import write_text_atomic
from data_prep import schema
from data_prep.sources.base import Item, Sample, SampleFailure, Source


@dataclass
class UnitPayload:
    """Everything known about one unit between stages."""

    unit: int
    samples: list[Sample] = field(default_factory=list)
    text_ids: list[list[int]] = field(default_factory=list)
    failures: list[SampleFailure] = field(default_factory=list)
    # Filled by the encoder, aligned with `samples` (None for text samples).
    latents: list[np.ndarray | None] = field(default_factory=list)
    logvars: list[np.ndarray | None] = field(default_factory=list)
    codes: list[np.ndarray | None] = field(default_factory=list)

    def dumps(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> "UnitPayload":
        return pickle.loads(data)


def items_to_json(items: list[Item]) -> str:
    return json.dumps([[i.key, i.modality, i.ref] for i in items])


def items_from_json(text: str) -> list[Item]:
    return [Item(key, modality, ref) for key, modality, ref in json.loads(text)]


def decode_unit(unit: int, items: list[Item], source: Source, text_tokenizer) -> UnitPayload:
    """Load every item of the unit; bad samples become failures with a reason."""
    payload = UnitPayload(unit)
    for result in source.load_batch(items):
        if isinstance(result, SampleFailure):
            payload.failures.append(result)
            continue
        payload.samples.append(result)
        payload.text_ids.append(text_tokenizer.encode(result.caption) if result.caption else [])
    return payload


class UnitEncoder:
    """Holds the image tokenizer (one per actor) and encodes a unit's pixels in batches."""

    def __init__(self, tokenizer_path: str, batch_size: int, latent_dtype: str, threads: int = 0,
                 image_size: int | None = None):
        import torch

        from model.tokenizers import load_image_tokenizer

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = load_image_tokenizer(tokenizer_path, image_size).to(self.device).eval()
        self.discrete = self.tokenizer.config.kind in ("vq", "fsq")
        self.batch_size = batch_size
        self.latent_dtype = np.dtype(latent_dtype)
        self.codes_dtype = np.int16 if (self.tokenizer.vocab_size or 0) <= 32767 else np.int32

    def encode(self, payload: UnitPayload) -> UnitPayload:
        n = len(payload.samples)
        payload.latents, payload.logvars, payload.codes = [None] * n, [None] * n, [None] * n
        for modality in ("image", "video"):
            index = [i for i, s in enumerate(payload.samples) if s.modality == modality]
            # Videos are encoded a few clips at a time so a batch holds about batch_size frames.
            step = self.batch_size if modality == "image" else max(1, self.batch_size // _frames(payload, index))
            for start in range(0, len(index), step):
                chunk = index[start:start + step]
                self._encode_chunk(payload, chunk, video=modality == "video")
        return payload

    def _encode_chunk(self, payload: UnitPayload, chunk: list[int], video: bool) -> None:
        torch = self.torch
        pixels = np.stack([payload.samples[i].pixels for i in chunk])  # (B, [T,] H, W, 3) uint8
        x = torch.from_numpy(pixels).to(self.device).float().div_(127.5).sub_(1.0)
        x = x.movedim(-1, -3).contiguous()  # (B, [T,] 3, H, W)
        with torch.inference_mode():
            out = self.tokenizer.encode_video(x) if video else self.tokenizer.encode(x)
        for j, i in enumerate(chunk):
            if self.discrete:
                payload.codes[i] = out.codes[j].cpu().numpy().astype(self.codes_dtype)
            else:
                payload.latents[i] = out.mean[j].float().cpu().numpy().astype(self.latent_dtype)
                payload.logvars[i] = out.logvar[j].float().cpu().numpy().astype(self.latent_dtype)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ray Data entry point: a batch of unit rows with a pickled payload each."""
        batch["payload"] = np.array(
            [self.encode(UnitPayload.loads(p)).dumps() for p in batch["payload"]], dtype=object
        )
        return batch


class FusedUnitWorker(UnitEncoder):
    """decode -> encode -> write in one actor call: the CPU-only pipeline's single stage.

    Without GPUs the decode and write tasks compete with the encoder actors for the same cores,
    so separate stages buy no overlap; they only add idle actor time between units (pipeline
    backpressure, moving multi-MB payloads through the object store). Fused, Ray Data just feeds
    unit descriptors to a pool of busy actors (bench/README.md).
    """

    def __init__(self, source: Source, text_tokenizer, out_dir: str, fingerprints: dict[str, str],
                 **encoder_kwargs):
        super().__init__(**encoder_kwargs)
        self.source, self.text_tokenizer = source, text_tokenizer
        self.out_dir, self.fingerprints = Path(out_dir), fingerprints

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        summaries = []
        for unit, items in zip(batch["unit"], batch["items"]):
            payload = self.encode(decode_unit(int(unit), items_from_json(items), self.source, self.text_tokenizer))
            summaries.append(write_unit(payload, self.out_dir, self.fingerprints))
        return {"unit": batch["unit"], "rows": np.array([s["rows"] for s in summaries]),
                "errors": np.array([s["errors"] for s in summaries])}


def _frames(payload: UnitPayload, index: list[int]) -> int:
    return max((payload.samples[i].pixels.shape[0] for i in index), default=1)


def write_unit(payload: UnitPayload, out_dir: Path, fingerprints: dict[str, str]) -> dict[str, Any]:
    """Write the unit's error records, then its shard (atomically, last): a unit is finished
    exactly when its shard file exists, so a rerun neither loses nor doubles anything."""
    rows, stats = [], LatentStats()
    modalities: dict[str, int] = {}
    splits = dict.fromkeys(schema.SPLITS, 0)
    val_fraction = float(fingerprints.get("val_fraction", 0.0))
    for i, sample in enumerate(payload.samples):
        row = schema.empty_row(sample.key, sample.modality)
        row["split"] = schema.split_of(sample.key, val_fraction)
        splits[row["split"]] += 1
        row["caption"] = sample.caption
        row["text_ids"] = payload.text_ids[i]
        row["meta"] = json.dumps(sample.meta, default=_json_default)
        if payload.latents and payload.latents[i] is not None:
            row["latent"], row["latent_shape"], row["latent_dtype"] = schema.array_to_bytes(payload.latents[i])
            row["latent_logvar"] = schema.array_to_bytes(payload.logvars[i])[0]
            stats.add(payload.latents[i], video=sample.modality == "video")
        if payload.codes and payload.codes[i] is not None:
            row["codes"], row["codes_shape"], row["codes_dtype"] = schema.array_to_bytes(payload.codes[i])
        rows.append(row)
        modalities[sample.modality] = modalities.get(sample.modality, 0) + 1
    write_errors(out_dir / "errors" / f"unit-{payload.unit:06d}.jsonl", payload.failures)
    shard_meta = {"unit": payload.unit, "rows": len(rows), "modalities": modalities, "splits": splits,
                  "latent_stats": stats.to_dict(), **fingerprints}
    path = out_dir / schema.shard_name(payload.unit)
    schema.write_shard(schema.rows_to_table(rows, shard_meta), path)
    return {"unit": payload.unit, "rows": len(rows), "errors": len(payload.failures), "file": path.name}


def write_errors(path: Path, failures: list[SampleFailure]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps({"key": f.key, "reason": f.reason, "ref": f.ref}, default=str) + "\n" for f in failures)
    write_text_atomic(path, "".join(lines), fsync=True)


class LatentStats:
    """Per-channel sums of continuous latents, merged across shards into mean/std for scaling."""

    def __init__(self, total: list[float] | None = None, total_sq: list[float] | None = None, count: int = 0):
        self.total = np.array(total or [], dtype=np.float64)
        self.total_sq = np.array(total_sq or [], dtype=np.float64)
        self.count = count

    def add(self, latent: np.ndarray, video: bool) -> None:
        channels_first = latent if not video else np.moveaxis(latent, 1, 0)  # (C, [T,] h, w)
        flat = channels_first.reshape(channels_first.shape[0], -1).astype(np.float64)
        if self.count == 0:
            self.total, self.total_sq = np.zeros(flat.shape[0]), np.zeros(flat.shape[0])
        self.total += flat.sum(axis=1)
        self.total_sq += (flat**2).sum(axis=1)
        self.count += flat.shape[1]

    def merge(self, other: "LatentStats") -> None:
        if other.count == 0:
            return
        if self.count == 0:
            self.total, self.total_sq = np.zeros_like(other.total), np.zeros_like(other.total_sq)
        self.total += other.total
        self.total_sq += other.total_sq
        self.count += other.count

    def to_dict(self) -> dict[str, Any]:
        return {"sum": self.total.tolist(), "sum_sq": self.total_sq.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatentStats":
        return cls(data.get("sum"), data.get("sum_sq"), data.get("count", 0))

    def summary(self) -> dict[str, Any]:
        if self.count == 0:
            return {}
        mean = self.total / self.count
        std = np.sqrt(np.maximum(self.total_sq / self.count - mean**2, 1e-12))
        overall = float(np.sqrt(max((self.total_sq.sum() / (self.count * len(mean))) - mean.mean() ** 2, 1e-12)))
        return {"mean": mean.tolist(), "std": std.tolist(), "count": self.count,
                "scale": 1.0 / overall}  # multiply latents by `scale` for unit variance (SD-style)


def _json_default(value: Any):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)

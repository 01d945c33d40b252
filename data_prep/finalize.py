"""The end of a prep run: merge error records, enforce `max_error_rate`, write manifest.json
(and optionally webdataset tars). Runs only when every unit's shard exists."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from core.errors import DataError
from core.files import write_text_atomic
from data_prep import schema
from data_prep.config import PrepConfig
from data_prep.stages import LatentStats

log = logging.getLogger(__name__)


def finalize(cfg: PrepConfig, out_dir: Path, num_items: int, num_units: int, fingerprints: dict[str, str]) -> dict:
    missing = [u for u in range(num_units) if not (out_dir / schema.shard_name(u)).exists()]
    if missing:
        raise DataError(f"{len(missing)} shards are missing in {out_dir} (e.g. unit {missing[0]}); rerun the same prep command")
    errors = merge_errors(out_dir, num_units)
    reasons = Counter(reason_category(e["reason"]) for e in errors)
    rate = len(errors) / max(num_items, 1)
    if rate > cfg.max_error_rate:
        top = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        raise DataError(
            f"{len(errors)} of {num_items} samples ({rate:.1%}) failed, over max_error_rate={cfg.max_error_rate} "
            f"({top}). Details in {out_dir / 'errors.jsonl'}; fix the input or raise max_error_rate"
        )
    shards, stats, total = [], LatentStats(), 0
    splits = dict.fromkeys(schema.SPLITS, 0)
    for unit in range(num_units):
        path = out_dir / schema.shard_name(unit)
        meta = schema.read_shard_meta(path)
        stats.merge(LatentStats.from_dict(meta.get("latent_stats", {})))
        shard_splits = {name: schema.shard_split_rows(meta, name) for name in schema.SPLITS}  # v1: all train
        shards.append({"file": path.name, "rows": meta["rows"], "sha256": schema.sha256_file(path),
                       "modalities": meta["modalities"], "splits": shard_splits})
        for name, rows in shard_splits.items():
            splits[name] += rows
        total += meta["rows"]
    manifest = schema.Manifest(
        schema_version=schema.SCHEMA_VERSION,
        num_samples=total,
        shards=shards,
        tokenizer=_tokenizer_info(cfg.tokenizer.path, cfg.image.size, fingerprints["tokenizer_fingerprint"]),
        text_tokenizer=_text_tokenizer_info(cfg.tokenizer.text, fingerprints["text_tokenizer_fingerprint"]),
        latent_stats=stats.summary(),
        errors={"count": len(errors), "rate": rate, "by_reason": dict(reasons.most_common())},
        prep_config=asdict(cfg),
        splits=splits,
    )
    if cfg.export_webdataset:
        from data_prep.export import export_webdataset

        export_webdataset(out_dir, manifest)
    manifest.write(out_dir)
    _log_summary(total, errors, reasons)
    return manifest.__dict__


def merge_errors(out_dir: Path, num_units: int) -> list[dict]:
    """errors.jsonl = listing errors + every unit's errors, in unit order (written atomically)."""
    parts = [out_dir / "errors" / "listing.jsonl"] + [out_dir / "errors" / f"unit-{u:06d}.jsonl" for u in range(num_units)]
    errors = []
    for part in parts:
        if part.exists():
            errors.extend(json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line)
    write_text_atomic(out_dir / "errors.jsonl", "".join(json.dumps(e) + "\n" for e in errors))
    return errors


def reason_category(reason: str) -> str:
    """Group reasons for the summary: text before the first colon, numbers folded."""
    return re.sub(r"\d+(\.\d+)?", "N", reason.split(":")[0])[:80]


def _tokenizer_info(path: str, image_size: int, fingerprint: str) -> dict:
    if not path:
        return {}
    from model.tokenizers import load_image_tokenizer

    tokenizer = load_image_tokenizer(path, image_size)
    return {"kind": tokenizer.config.kind, "fingerprint": fingerprint, "path": str(Path(path).resolve()),
            "latent_shape": list(tokenizer.latent_shape()), "vocab_size": tokenizer.vocab_size,
            "temporal_compression": tokenizer.temporal_compression, "info_budget": tokenizer.info_budget(),
            "config": tokenizer.config.to_dict()}


def _text_tokenizer_info(spec: str, fingerprint: str) -> dict:
    from model.tokenizers import load_text_tokenizer

    text = load_text_tokenizer(spec)
    return {"name": text.name, "spec": spec if spec == "byte" else str(Path(spec).resolve()),
            "fingerprint": fingerprint, "vocab_size": text.vocab_size}


def _log_summary(total: int, errors: list[dict], reasons: Counter) -> None:
    log.info("%d samples written, %d skipped", total, len(errors))
    for reason, count in reasons.most_common(10):
        log.info("  skipped %5d x %s", count, reason)

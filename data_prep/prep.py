"""`nodd prep`: turn a source into verified shards with Ray Data (or in one process).

    nodd prep --config configs/prep/shapes.toml [source.limit=5000] [ray.address=auto]

Plan (driver): list every item, drop duplicate keys, cut the list into units of `shard_size`.
Run (Ray Data): decode tasks -> encoder actor pool (GPU) -> shard-writer tasks, one row per unit;
on CPU-only clusters one fused decode+encode+write actor stage (stages.FusedUnitWorker).
Finish (driver): merge per-unit error records, check `max_error_rate`, write manifest.json.

A rerun of the same command skips units whose shard exists, so a crash or `kill -9` loses at
most the units in flight and never writes a sample twice. Changing data-affecting settings
(source, image/video size, tokenizer, shard size) for an existing out_dir is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from core.config import save_resolved
from core.errors import ConfigError, DataError
from core.files import write_text_atomic
from data_prep import schema
from data_prep.config import PrepConfig
from data_prep.finalize import finalize
from data_prep.sources import Item, SampleFailure, build_source
from data_prep.stages import (
    FusedUnitWorker,
    UnitEncoder,
    UnitPayload,
    decode_unit,
    items_from_json,
    items_to_json,
    write_errors,
    write_unit,
)

log = logging.getLogger(__name__)
STATE = "prep_state.json"


@dataclass
class Plan:
    units: list[list[Item]]
    listing_failures: list[SampleFailure]
    fingerprints: dict[str, str]

    @property
    def num_items(self) -> int:
        return sum(len(u) for u in self.units) + len(self.listing_failures)


def run_prep(cfg: PrepConfig) -> dict:
    """Run (or resume) prep; returns the finished manifest as a dict."""
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out_dir / "prep_config.toml")
    started = time.perf_counter()
    source = build_source(cfg.source, cfg.image, cfg.video, out_dir / "_generated")
    text_tokenizer = _load_text_tokenizer(cfg.tokenizer.text)
    plan = make_plan(cfg, source, text_tokenizer)
    _check_state(cfg, out_dir, plan)
    write_errors(out_dir / "errors" / "listing.jsonl", plan.listing_failures)
    _remove_partial_files(out_dir)
    pending = [u for u in range(len(plan.units)) if not (out_dir / schema.shard_name(u)).exists()]
    done = len(plan.units) - len(pending)
    log.info("prep: %d items in %d units (%d already written, %d to do) -> %s",
             plan.num_items, len(plan.units), done, len(pending), out_dir)
    if pending:
        runner = _run_ray if cfg.use_ray else _run_local
        runner(cfg, plan, pending, source, text_tokenizer, out_dir)
    manifest = finalize(cfg, out_dir, plan.num_items, len(plan.units), plan.fingerprints)
    log.info("prep finished in %.1f s: %d samples (%d held out for validation), %d errors, manifest %s",
             time.perf_counter() - started, manifest["num_samples"], manifest["splits"].get("val", 0),
             manifest["errors"]["count"], out_dir / schema.MANIFEST)
    return manifest


def _load_text_tokenizer(spec: str):
    from model.tokenizers import load_text_tokenizer

    return load_text_tokenizer(spec)


def make_plan(cfg: PrepConfig, source, text_tokenizer) -> Plan:
    items, seen, failures = [], {}, []
    for item in source.items():
        if item.key in seen:
            failures.append(SampleFailure(item.key, f"duplicate key (first seen as {seen[item.key]})", item.ref))
            continue
        seen[item.key] = item.ref
        items.append(item)
    failures = source.listing_errors + failures
    if not items:
        raise DataError(f"source {cfg.source.kind} {cfg.source.path!r} has no usable samples"
                        + (f" (first problem: {failures[0].reason})" if failures else ""))
    units = [items[i:i + cfg.shard_size] for i in range(0, len(items), cfg.shard_size)]
    fingerprints = {"text_tokenizer_fingerprint": text_tokenizer.fingerprint, "tokenizer_fingerprint": ""}
    if cfg.split.val_fraction > 0:  # travels with the fingerprints into every shard's metadata
        fingerprints["val_fraction"] = cfg.split.val_fraction  # (and into the resume check)
    if cfg.tokenizer.path:
        from model.tokenizers import image_tokenizer_fingerprint, load_image_tokenizer

        load_image_tokenizer(cfg.tokenizer.path, cfg.image.size)  # fail here, before Ray starts
        fingerprints["tokenizer_fingerprint"] = image_tokenizer_fingerprint(cfg.tokenizer.path)
    return Plan(units, failures, fingerprints)


def _check_state(cfg: PrepConfig, out_dir: Path, plan: Plan) -> None:
    """Refuse to mix shards made with different data-affecting settings in one folder."""
    state = {
        "source": asdict(cfg.source), "image": asdict(cfg.image), "video": asdict(cfg.video),
        "shard_size": cfg.shard_size, "latent_dtype": cfg.latent_dtype, "num_units": len(plan.units),
        **plan.fingerprints,
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    path = out_dir / STATE
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous.get("digest") != digest:
            changed = sorted(k for k in state if previous.get("state", {}).get(k) != state[k])
            if changed == ["num_units"]:
                changed = ["the source now lists a different number of samples"]
            raise ConfigError(
                f"{out_dir} holds shards prepared with other settings (changed: {', '.join(changed) or 'unknown'}); "
                "use a new out_dir, or delete that folder to start over"
            )
        return
    if any(out_dir.glob(schema.SHARD_GLOB)):
        raise ConfigError(f"{out_dir} already holds shards not made by this prep; choose an empty out_dir")
    write_text_atomic(path, json.dumps({"digest": digest, "state": state}, indent=2))


def _remove_partial_files(out_dir: Path) -> None:
    """Temp files left by a killed run; their units are redone."""
    for tmp in list(out_dir.glob("*.tmp")) + list((out_dir / "errors").glob("*.tmp")):
        tmp.unlink(missing_ok=True)


def _progress() -> Progress:
    return Progress(TextColumn("prep"), BarColumn(), MofNCompleteColumn(), TextColumn("shards"),
                    TextColumn("{task.fields[samples]} samples, {task.fields[errors]} errors"),
                    TimeRemainingColumn(), transient=False)


class _ErrorBudget:
    """Stops the run as soon as the error rate cannot end under `max_error_rate`."""

    def __init__(self, cfg: PrepConfig, plan: Plan):
        self.limit = cfg.max_error_rate * plan.num_items
        self.errors = len(plan.listing_failures)
        self.cfg = cfg
        self.total = plan.num_items

    def add(self, errors: int, out_dir: Path) -> None:
        self.errors += errors
        if self.errors > self.limit and self.cfg.max_error_rate < 1.0:
            raise DataError(
                f"{self.errors} of {self.total} samples failed so far, over max_error_rate={self.cfg.max_error_rate}; "
                f"see {out_dir / 'errors'}/*.jsonl for reasons. Fix the input or raise max_error_rate"
            )


def _run_local(cfg, plan, pending, source, text_tokenizer, out_dir) -> None:
    encoder = (UnitEncoder(cfg.tokenizer.path, cfg.encode_batch_size, cfg.latent_dtype, image_size=cfg.image.size)
               if cfg.tokenizer.path else None)
    budget = _ErrorBudget(cfg, plan)
    with _progress() as bar:
        task = bar.add_task("prep", total=len(pending), samples=0, errors=0)
        samples = errors = 0
        for unit in pending:
            payload = decode_unit(unit, plan.units[unit], source, text_tokenizer)
            if encoder is not None:
                payload = encoder.encode(payload)
            summary = write_unit(payload, out_dir, plan.fingerprints)
            samples, errors = samples + summary["rows"], errors + summary["errors"]
            bar.update(task, advance=1, samples=samples, errors=errors)
            budget.add(summary["errors"], out_dir)


def _run_ray(cfg, plan, pending, source, text_tokenizer, out_dir) -> None:
    from data_prep.ray_runtime import encoder_resources, init_ray

    init_ray(cfg.ray)  # before `import ray`: it sets the auth mode Ray reads at import
    import numpy as np
    import ray
    encoders, actor_cpus, actor_gpus, threads = encoder_resources(cfg.ray, len(pending))
    fingerprints = plan.fingerprints
    out = str(out_dir.resolve())

    def decode(batch):
        payloads = [decode_unit(int(u), items_from_json(s), source, text_tokenizer).dumps()
                    for u, s in zip(batch["unit"], batch["items"])]
        return {"unit": batch["unit"], "payload": np.array(payloads, dtype=object)}

    def write(batch):
        summaries = [write_unit(UnitPayload.loads(p), Path(out), fingerprints) for p in batch["payload"]]
        return {"unit": batch["unit"], "rows": np.array([s["rows"] for s in summaries]),
                "errors": np.array([s["errors"] for s in summaries])}

    rows = [{"unit": u, "items": items_to_json(plan.units[u])} for u in pending]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    encoder_kwargs = {"tokenizer_path": str(Path(cfg.tokenizer.path).resolve()) if cfg.tokenizer.path else "",
                      "batch_size": cfg.encode_batch_size, "latent_dtype": cfg.latent_dtype,
                      "threads": threads, "image_size": cfg.image.size}
    if cfg.tokenizer.path and not actor_gpus and cfg.ray.fuse_cpu_stages:
        # CPU only: one fused stage (see FusedUnitWorker for why).
        ds = ds.map_batches(
            FusedUnitWorker, batch_size=1, num_cpus=actor_cpus,
            fn_constructor_kwargs={"source": source, "text_tokenizer": text_tokenizer, "out_dir": out,
                                   "fingerprints": fingerprints, **encoder_kwargs},
            compute=ray.data.ActorPoolStrategy(size=encoders),
        )
    else:
        ds = ds.map_batches(decode, batch_size=1, num_cpus=0.5)
        if cfg.tokenizer.path:
            ds = ds.map_batches(UnitEncoder, batch_size=1, num_cpus=actor_cpus, num_gpus=actor_gpus,
                                fn_constructor_kwargs=encoder_kwargs,
                                compute=ray.data.ActorPoolStrategy(size=encoders))
        ds = ds.map_batches(write, batch_size=1, num_cpus=0.25)
    budget = _ErrorBudget(cfg, plan)
    with _progress() as bar:
        task = bar.add_task("prep", total=len(pending), samples=0, errors=0)
        samples = errors = 0
        for row in ds.iter_rows():
            samples, errors = samples + int(row["rows"]), errors + int(row["errors"])
            bar.update(task, advance=1, samples=samples, errors=errors)
            budget.add(int(row["errors"]), out_dir)


__all__ = ["run_prep", "make_plan", "Plan"]

"""The checkpoint folder protocol (engine-neutral): the engine writes its payload (model and
optimizer) into a folder that the trainer creates, completes and publishes atomically.

    run_dir/checkpoints/step-000200/       a finished checkpoint:
        <engine payload>                   (native: DCP files; any layout loads any other)
        rank-00000.pt ...                  every rank's own state (data loader position)
        export/                            the weights as safetensors (pipeline/export.py), read by
                                           nodd sample / caption / eval whatever the engine
        meta.json                          step, engine, format_version, world and layout
    run_dir/checkpoints/step-000300.tmp/   a save in progress: never loaded, removed on resume

A save goes to `<name>.tmp`; after every rank has written, rank 0 writes meta.json and renames
the folder, so a crash mid-save leaves the previous checkpoint as the latest one. The newest
`keep` finished checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from core.errors import DataError
from pipeline.engines.base import Engine
from pipeline.export import write_export

PREFIX = "step-"
# 2: the engine's name and export/ joined the folder (version 1, native DCP only, still loads)
# 3: SwiGLU's ffn.w13 became ffn.w1 and ffn.w3 (model/transformer.py). An older payload cannot
#    be resumed; its export/ (read_export converts it) still samples, evaluates and exports.
# 4: with optim.ema_decay > 0 the payload holds the weight average and export/ holds the average
#    (model.json: ema_decay). Format 3 loads; its average restarts from the loaded weights.
FORMAT_VERSION = 4
LAST_FUSED_FFN_FORMAT = 2
EXPORT_DIR = "export"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(self, run_dir: str | Path, keep: int, rank: int, world: int = 1):
        self.root = Path(run_dir) / "checkpoints"
        self.keep, self.rank, self.world = keep, rank, world

    def finished(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp")
                      and (p / "meta.json").is_file())

    def save(self, step: int, engine: Engine, extra: dict[str, Any], meta: dict[str, Any],
             export_meta: dict | None = None, export: bool = True) -> Path:
        """Every rank calls it. `export_meta`: model.json's contents (rank 0)."""
        final = self.root / f"{PREFIX}{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        engine.save(tmp)
        torch.save(extra, tmp / f"rank-{self.rank:05d}.pt")
        if export:
            write_export(tmp / EXPORT_DIR, engine.export_state_dict(), export_meta, self.rank, self.world)
        _barrier()
        if self.rank == 0:
            record = {"step": step, "format_version": FORMAT_VERSION, "engine": engine.name, **meta}
            (tmp / "meta.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in self.finished()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load_latest(self, engine: Engine) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(meta, this rank's extra state, or None when this rank did not exist in the saved run)
        of the newest finished checkpoint, loaded into the engine; None when there is none."""
        if self.rank == 0:
            for partial in self.root.glob(f"{PREFIX}*.tmp"):
                shutil.rmtree(partial, ignore_errors=True)  # an interrupted save: never loaded
        _barrier()
        done = self.finished()
        if not done:
            return None
        path = done[-1]
        meta = read_meta(path)
        if meta.get("engine", "native") != engine.name:
            raise DataError(f"{path} was written by the {meta['engine']} engine; resume with "
                            f"train.engine={meta['engine']}, or start a new run from its weights ({path / EXPORT_DIR})")
        if meta.get("format_version", 1) <= LAST_FUSED_FFN_FORMAT:
            raise DataError(f"{path} is checkpoint format {meta.get('format_version', 1)}, written before nodd split "
                            "the SwiGLU projection ffn.w13 into w1 and w3; it cannot be resumed. Its weights still "
                            f"sample and evaluate (nodd sample --run {path}); start a new run_dir to train on")
        engine.load(path)
        own = path / f"rank-{self.rank:05d}.pt"
        extra = torch.load(own, weights_only=False) if own.is_file() else None
        return meta, extra


def read_meta(checkpoint: Path) -> dict[str, Any]:
    meta = json.loads((checkpoint / "meta.json").read_text(encoding="utf-8"))
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise DataError(f"{checkpoint} is checkpoint format {meta['format_version']}, newer than this nodd reads "
                        f"({FORMAT_VERSION}); upgrade nodd")
    return meta


def read_layout_file(path: Path) -> dict[str, Any]:
    """An engine's layout record inside a checkpoint (megatron.json, deepspeed.json), or a
    DataError saying what to do."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); delete {Path(path).parent} to resume from the checkpoint "
                        "before it, or start a new run_dir") from None


def layout_changes(saved: dict[str, Any], layout: dict[str, Any]) -> str:
    """"key old -> new" for each setting of `layout` that differs from `saved`."""
    return ", ".join(f"{k} {saved.get(k)} -> {v}" for k, v in layout.items() if saved.get(k) != v)

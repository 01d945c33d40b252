"""Checkpoints: torch.distributed.checkpoint (DCP) for model and optimizer, plus every rank's own
state (data loader position, RNG), written atomically, last K kept.

    run_dir/checkpoints/step-000200/      a finished checkpoint (DCP files, rank-*.pt, meta.json)
    run_dir/checkpoints/step-000300.tmp/  a save in progress: never loaded, removed on resume

A save goes to `<name>.tmp`; after every rank has written, rank 0 writes meta.json and renames
the folder, so a crash mid-save leaves the previous checkpoint as the latest one. DCP stores
sharded tensors with their global layout, so a checkpoint loads on another world size or
parallel layout (the loader then restarts its position at the next epoch: see PackedLoader).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from core.errors import DataError

PREFIX = "step-"
# One process is a valid DCP use (it saves/loads as a single rank); its warning says nothing new.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class Checkpointer:
    def __init__(self, run_dir: str | Path, keep: int, rank: int):
        self.root = Path(run_dir) / "checkpoints"
        self.keep, self.rank = keep, rank

    def finished(self) -> list[Path]:
        return sorted(p for p in self.root.glob(f"{PREFIX}*") if p.is_dir() and not p.name.endswith(".tmp")
                      and (p / "meta.json").is_file())

    def save(self, step: int, model, optimizer, extra: dict[str, Any], meta: dict[str, Any]) -> Path:
        final = self.root / f"{PREFIX}{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, checkpoint_id=str(tmp))
        torch.save(extra, tmp / f"rank-{self.rank:05d}.pt")
        _barrier()
        if self.rank == 0:
            (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2), encoding="utf-8")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            for old in self.finished()[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load_latest(self, model, optimizer) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        """(meta, this rank's extra state, or None when this rank did not exist in the saved run)
        of the newest finished checkpoint, loaded into model and optimizer; None when there is none."""
        if self.rank == 0:
            for partial in self.root.glob(f"{PREFIX}*.tmp"):
                shutil.rmtree(partial, ignore_errors=True)  # an interrupted save: never loaded
        _barrier()
        done = self.finished()
        if not done:
            return None
        path = done[-1]
        _load(path, model, optimizer)
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        own = path / f"rank-{self.rank:05d}.pt"
        extra = torch.load(own, weights_only=False) if own.is_file() else None
        return meta, extra


def load_weights(model, checkpoint: Path) -> None:
    """Model weights only (sampling, export), from a checkpoint of any layout, into a plain model."""
    _load(checkpoint, model)


def _load(path: Path, model, optimizer=None) -> None:
    """DCP-load the model (and optimizer) state in place; DCP reshards to the current layout."""
    try:
        state = {"model": get_model_state_dict(model)}
        if optimizer is not None:
            state["optim"] = get_optimizer_state_dict(model, optimizer)
        dcp.load(state, checkpoint_id=str(path))
        set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, state["optim"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
        raise DataError(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {exc}); delete that "
                        "folder to resume from the one before it, or start a new run_dir") from None

"""The native engine's checkpoint payload: model and optimizer through torch.distributed.checkpoint
(DCP), and the weight average when optim.ema_decay > 0 (ema.py). DCP stores sharded tensors with
their global layout, so a payload saved under one layout or world size loads under any other (it
reshards), and into a plain one-process model."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.optim import Optimizer

from core.errors import DataError
from pipeline.engines.ema import WeightAverage

log = logging.getLogger(__name__)

# One process is a valid DCP use (it saves/loads as a single rank); its warning says nothing new.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def save_state(folder: Path, model: nn.Module, optimizer: Optimizer, average: WeightAverage | None = None) -> None:
    """Every rank writes its shards of the model and optimizer state (and average) into `folder`."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    if average is not None:
        state["ema"] = average.state_dict()
    dcp.save(state, checkpoint_id=str(folder))


def load_state(folder: Path, model: nn.Module, optimizer: Optimizer | None = None,
               average: WeightAverage | None = None) -> None:
    """DCP-load the model (and optimizer, and average) state in place, resharded to the current
    layout. A payload saved without an average (optim.ema_decay was 0, or nodd before checkpoint
    format 4) restarts the average from the loaded weights."""
    try:
        state = {"model": get_model_state_dict(model)}
        if optimizer is not None:
            state["optim"] = get_optimizer_state_dict(model, optimizer)
        has_average = average is not None and _saved_average(folder)
        if has_average:
            state["ema"] = average.state_dict()
        dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, state["optim"])
        if has_average:
            average.load_state_dict(state["ema"])
        elif average is not None:
            log.warning("%s holds no weight average; optim.ema_decay averages from its weights on", folder)
            average.restart_from_weights()
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
        raise DataError(f"checkpoint {folder} cannot be loaded ({type(exc).__name__}: {exc}); delete that "
                        "folder to resume from the one before it, or start a new run_dir") from None


def _saved_average(folder: Path) -> bool:
    keys = dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    return any(key.startswith("ema.") for key in keys)

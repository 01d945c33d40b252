"""The native engine's checkpoint payload: model and optimizer through torch.distributed.checkpoint
(DCP). DCP stores sharded tensors with their global layout, so a payload saved under one layout or
world size loads under any other (it reshards), and into a plain one-process model."""

from __future__ import annotations

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

# One process is a valid DCP use (it saves/loads as a single rank); its warning says nothing new.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def save_state(folder: Path, model: nn.Module, optimizer: Optimizer) -> None:
    """Every rank writes its shards of the model and optimizer state into `folder`."""
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(folder))


def load_state(folder: Path, model: nn.Module, optimizer: Optimizer | None = None) -> None:
    """DCP-load the model (and optimizer) state in place, resharded to the current layout."""
    try:
        state = {"model": get_model_state_dict(model)}
        if optimizer is not None:
            state["optim"] = get_optimizer_state_dict(model, optimizer)
        dcp.load(state, checkpoint_id=str(folder))
        set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, state["optim"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user problem
        raise DataError(f"checkpoint {folder} cannot be loaded ({type(exc).__name__}: {exc}); delete that "
                        "folder to resume from the one before it, or start a new run_dir") from None

"""Build the model on the meta device and materialise only this rank's part of it.

    plan = init_plan(meta_model)            # every parameter's name, shape and initialiser, in draw order
    replay_construction_draws(meta_model)   # the CPU generator as after building on the CPU
    ... cut the pipeline stage, parallelize (TP, activation checkpointing, compile, FSDP) on meta ...
    materialise(model, plan, device)        # allocate this rank's shards, fill them

No rank ever allocates the whole model: each parameter is drawn whole on the CPU, one at a time,
in the order `MultimodalModel.init_weights` draws (the plan), and the rank copies out its own
shard (a DTensor's local piece: FSDP's rows, tensor parallel's heads) or drops it (another
pipeline stage's). Because a one-process run draws from the same generator in the same order,
every layout starts from bit-identical weights - and from the weights a model built on the CPU
and then `init_weights()`-ed starts from (the construction draws are replayed first), so runs
made before meta builds keep their numbers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from model.multimodal import MultimodalModel
from model.pretrained import PretrainedLLM, overlay
from model.transformer import Init


@dataclass
class PlannedParameter:
    name: str
    shape: torch.Size
    dtype: torch.dtype
    init: Init


def init_plan(model: MultimodalModel) -> list[PlannedParameter]:
    """The full model's parameters in init_weights' order (call before a pipeline cut)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [PlannedParameter(names[id(p)], p.shape, p.dtype, init) for p, init in model.initializers()]


def replay_construction_draws(model: nn.Module) -> None:
    """Advance the CPU generator exactly as building `model` on the CPU would have: each
    module's default initialisation (nn.Linear's Kaiming draw, nn.Embedding's normal) runs on
    a throwaway CPU copy of that one module, in construction order."""
    for module in model.modules():
        if hasattr(module, "reset_parameters") and next(module.parameters(recurse=False), None) is not None:
            shadow = copy.deepcopy(module).to_empty(device="cpu")
            shadow.reset_parameters()


@torch.no_grad()
def materialise(model: MultimodalModel, plan: list[PlannedParameter], device: torch.device,
                start_from: dict[str, torch.Tensor] | None = None, llm: PretrainedLLM | None = None) -> None:
    """Allocate `model`'s (possibly sharded, possibly pruned) parameters on `device` and fill
    them with their part of the plan's full values (or of `start_from`'s: train.init_from), the
    pretrained LLM's tensors over them (model.init_from: its rows of the embeddings)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    model.to_empty(device=device)
    model.tie_weights()
    params = dict(model.named_parameters())
    pretrained = set(llm.names(model.cfg)) if llm is not None else set()
    for planned in plan:
        if start_from is not None:
            full = start_from[planned.name].to(planned.dtype)
        else:
            full = torch.empty(planned.shape, dtype=planned.dtype)  # CPU: the generator one process draws from
            planned.init(full)
        param = params.get(planned.name)
        if param is None:
            continue  # another pipeline stage's parameter: drawn only to keep the stream in step
        if planned.name in pretrained:
            overlay(full, llm.tensor(planned.name, model.cfg))
        if isinstance(param, DTensor):
            # src_data_rank=None: every rank holds the same full values, so each cuts its own piece
            piece = distribute_tensor(full.to(device), param.device_mesh, param.placements, src_data_rank=None)
            param.to_local().copy_(piece.to_local())
        else:
            param.copy_(full)

"""One optimizer step's forward and backward over its micro-batches, without and with pipeline
parallelism. Both return the same thing: the loss breakdown averaged over the micro-batches, on
every rank, with gradients accumulated as if each micro-batch's loss were divided by their count.

    step = make_step(model_or_stage, mesh, pcfg, autocast, device, microbatches, rows, seq_len)
    totals = step(batches, seeds)       # {"loss", "text", "understanding", "image"}

`seeds[i]` seeds the noise and time draws of micro-batch i, so any layout draws what a
one-process run draws.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from model.batch import PackedBatch
from model.multimodal import MultimodalModel

PARTS = ("loss", "text", "understanding", "image")


class LocalStep:
    """Every block on this rank (one process, FSDP, TP): a plain loop of forward + backward."""

    def __init__(self, model: MultimodalModel, autocast: AbstractContextManager | None = None):
        self.model, self.autocast = model, autocast or nullcontext()

    def __call__(self, batches: list[PackedBatch], seeds: list[int]) -> dict[str, float]:
        totals = dict.fromkeys(PARTS, 0.0)
        for batch, seed in zip(batches, seeds):
            torch.manual_seed(seed)
            with self.autocast:
                out = self.model(batch)
            (out.loss / len(batches)).backward()
            for k, v in {"loss": out.loss.detach(), **out.losses}.items():
                totals[k] += float(v) / len(batches)
        return totals


def make_step(model: nn.Module, mesh, pcfg, autocast: AbstractContextManager | None, device: torch.device,
              microbatches: int, rows: int, seq_len: int):
    """The step function for this layout: `model` is the MultimodalModel, or with pp > 1 this
    rank's `pipelining.StageModule`, whose micro-batches must all be (rows, seq_len)."""
    if pcfg.pp == 1:
        return LocalStep(model, autocast)
    from pipeline.engines.native.pipelining import PipelineStep

    return PipelineStep(model, mesh, pcfg, autocast, device, microbatches, rows, seq_len)


def share_from_last_stage(values: list[float], mesh, device: torch.device) -> list[float]:
    """The last pipeline stage computed `values`, the others hold zeros: sum over the stage group."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=mesh["pp"].get_group())
    return t.cpu().tolist()

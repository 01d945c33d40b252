"""One optimizer step's forward and backward over its micro-batches without pipeline
parallelism (LocalStep), and what it shares with the pipeline's (pipelining.PipelineStep). Both
return the same thing: the loss breakdown averaged over the micro-batches, on every rank, with
gradients accumulated as if each micro-batch's loss were divided by their count.

    step = LocalStep(model, copies)     # copies: precision.CastCopies (bf16 without FSDP) or None
    totals = step(batches, seeds)       # {"loss", "text", "understanding", "image"}
    totals = step.evaluate(batches, seeds)   # the same, forward only (validation)

`seeds[i]` seeds the noise and time draws of micro-batch i, so any layout draws what a
one-process run draws.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist

from model.batch import PackedBatch
from model.multimodal import MultimodalModel
from pipeline.engines.base import LOSS_PARTS as PARTS
from pipeline.engines.native.precision import CastCopies


class LocalStep:
    """Every block on this rank (one process, FSDP, TP): a plain loop of forward + backward."""

    def __init__(self, model: MultimodalModel, copies: CastCopies | None = None):
        self.model, self.copies = model, copies

    def __call__(self, batches: list[PackedBatch], seeds: list[int]) -> dict[str, float]:
        return self._run(batches, seeds, backward=True)

    @torch.no_grad()
    def evaluate(self, batches: list[PackedBatch], seeds: list[int]) -> dict[str, float]:
        return self._run(batches, seeds, backward=False)

    def _run(self, batches: list[PackedBatch], seeds: list[int], backward: bool) -> dict[str, float]:
        totals = dict.fromkeys(PARTS, 0.0)
        if self.copies is not None:  # the master weights moved since the last cast
            self.copies.cast()
        for batch, seed in zip(batches, seeds):
            torch.manual_seed(seed)
            with self.copies.applied() if self.copies is not None else nullcontext():
                out = self.model(batch)
            if backward:
                (out.loss / len(batches)).backward()
                if self.copies is not None:
                    self.copies.fold_grads()
            add_losses(totals, out, len(batches))
        return totals


def add_losses(totals: dict[str, float], out, count: int) -> None:
    """Add one micro-batch's loss breakdown (a StepOutput) to `totals`, as a mean over `count`."""
    for k, v in {"loss": out.loss.detach(), **out.losses}.items():
        totals[k] += float(v) / count


def share_from_last_stage(values: list[float], mesh, device: torch.device) -> list[float]:
    """The last pipeline stage computed `values`, the others hold zeros: sum over the stage group."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=mesh["pp"].get_group())
    return t.cpu().tolist()

"""Pipeline parallelism with torch.distributed.pipelining: the model cut at block boundaries,
one stage per rank of the mesh's "pp" dimension, run by a 1F1B (or GPipe) schedule.

    stage = build_stage(full_model, mesh, pcfg)     # on the meta device: drops what this stage does not own
    parallelize(full_model, mesh, pcfg, root=stage)
    step = PipelineStep(stage, mesh, pcfg, copies, device, optim.grad_accum, rows, seq_len, dtype)

Stage 0 owns the embeddings and adapters, the last stage the final norm and every head; the
blocks are split evenly. Only the hidden states (B, T, W) travel between stages. Everything else
a stage needs (masks, positions, targets, latents) it reads from its own copy of the micro-batch:
every stage of a pipeline has the same data-parallel rank, so its loader yields the same
batches. Noise is drawn from the micro-batch's seed on the first and the last stage alike, so
both see the draw a one-process run makes. Shapes are declared up front (static mode), so every
micro-batch must have the training loader's fixed (batch_rows, seq_len) shape.

Kept parameter names (`backbone.layers.5...`) are those of the full model, so a checkpoint
written under any pipeline layout loads under any other (DCP reshards).
"""

from __future__ import annotations

import torch
from torch import nn

from model.batch import PackedBatch
from model.multimodal import MultimodalModel, StepOutput
from pipeline.engines.base import LOSS_PARTS as PARTS
from pipeline.engines.native.precision import CastCopies
from pipeline.engines.native.steps import add_losses, share_from_last_stage

FIRST_STAGE_PARTS = ("tok_embeddings", "modality_embeddings", "latent_in", "time_embed", "position_query",
                     "patch_position", "mask_embedding", "scale_embedding")
LAST_STAGE_PARTS = ("lm_head", "latent_out", "mar_head")


def stage_layers(depth: int, stages: int, stage: int) -> list[str]:
    """Names of the blocks stage `stage` holds: an even, contiguous split."""
    per = depth // stages
    return [str(i) for i in range(stage * per, (stage + 1) * per)]


def split_model(model: MultimodalModel, stage: int, stages: int) -> MultimodalModel:
    """Keep only what `stage` runs (in place). Call on the meta device, after taking the full
    model's init plan (materialize.py), so every stage starts from the same full model's weights."""
    keep = set(stage_layers(model.cfg.depth, stages, stage))
    for name in list(model.backbone.layers.keys()):
        if name not in keep:
            del model.backbone.layers[name]
    if stage > 0:
        for name in FIRST_STAGE_PARTS:
            setattr(model, name, None)
    if stage < stages - 1:
        for name in LAST_STAGE_PARTS:
            setattr(model, name, None)
        model.backbone.norm = None
    return model


def build_stage(model: MultimodalModel, mesh, pcfg) -> "StageModule":
    """This rank's stage of the full `model` (pruned in place), wrapped for the schedule. Pass it
    as `root` to parallelize(), so FSDP gathers the embeddings and heads around its forward."""
    stage = mesh["pp"].get_local_rank()
    return StageModule(split_model(model, stage, pcfg.pp), stage == 0, stage == pcfg.pp - 1)


class StageModule(nn.Module):
    """What the schedule runs per micro-batch: forward(x, micro) -> hidden states, or the loss on
    the last stage. `x` is the previous stage's output (stage 0: the micro-batch index)."""

    def __init__(self, model: MultimodalModel, first: bool, last: bool):
        super().__init__()
        self.model, self.first, self.last = model, first, last
        self.feed: list[tuple[PackedBatch, int]] = []  # (micro-batch, noise seed) of this step
        self.outputs: list[StepOutput] = []  # last stage: each micro-batch's loss breakdown

    def forward(self, x: torch.Tensor, micro: torch.Tensor) -> torch.Tensor:
        batch, seed = self.feed[int(micro[0])]
        torch.manual_seed(seed)
        m = self.model
        inputs, velocity_target = m.diffusion_inputs(batch) if (self.first or self.last) else (None, None)
        h = m.embed_batch(batch, inputs) if self.first else x
        h = m.trunk(h, m.batch_context(batch))
        if not self.last:
            return h
        out = m.losses(h, batch, velocity_target)
        self.outputs.append(out)
        return out.loss


class PipelineStep:
    """Forward and backward of one optimizer step through the pipeline; see steps.LocalStep."""

    def __init__(self, stage_module: StageModule, mesh, pcfg, copies: CastCopies | None,
                 device: torch.device, microbatches: int, rows: int, seq_len: int, dtype: torch.dtype):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.mesh, self.device, self.microbatches = mesh, device, microbatches
        stage, stages = mesh["pp"].get_local_rank(), pcfg.pp
        self.module = stage_module
        self.copies = copies
        width = stage_module.model.cfg.width
        # the hidden states between stages, in the compute dtype; their grads flow back
        hidden = torch.empty(rows, seq_len, width, device="meta", dtype=dtype, requires_grad=True)
        inputs = torch.empty(1, dtype=torch.long, device="meta") if stage == 0 else hidden
        outputs = torch.empty((), device="meta") if stage == stages - 1 else hidden
        self.stage = PipelineStage(self.module, stage, stages, device, input_args=inputs, output_args=outputs,
                                   group=mesh["pp"].get_group())
        schedule = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[pcfg.pp_schedule]
        # the stage returns its loss already; scale_grads divides the summed gradients by the
        # micro-batch count, as LocalStep's loss / len(batches) does
        self.schedule = schedule(self.stage, n_microbatches=microbatches, loss_fn=lambda loss, _target: loss,
                                 scale_grads=True)

    def __call__(self, batches: list[PackedBatch], seeds: list[int]) -> dict[str, float]:
        return self._run(batches, seeds, backward=True)

    @torch.no_grad()
    def evaluate(self, batches: list[PackedBatch], seeds: list[int]) -> dict[str, float]:
        """Forward only: the schedule's `eval` (no backward, no gradients)."""
        return self._run(batches, seeds, backward=False)

    def _run(self, batches: list[PackedBatch], seeds: list[int], backward: bool) -> dict[str, float]:
        if len(batches) != self.microbatches:
            raise ValueError(f"the pipeline schedule was built for {self.microbatches} micro-batches, got {len(batches)}")
        self.module.feed = list(zip(batches, seeds))
        self.module.outputs = []
        ids = torch.arange(len(batches), device=self.device)
        target = torch.zeros(len(batches), device=self.device)
        run = self.schedule.step if backward else self.schedule.eval
        if self.copies is None:
            run(ids, target=target, micro=ids, return_outputs=False)
        else:  # the schedule runs (and scales the gradients of) the step's bf16 copies
            self.copies.cast()
            with self.copies.applied():
                run(ids, target=target, micro=ids, return_outputs=False)
            if backward:
                self.copies.fold_grads()
        totals = dict.fromkeys(PARTS, 0.0)
        for out in self.module.outputs:  # empty except on the last stage
            add_losses(totals, out, len(batches))
        self.module.feed, self.module.outputs = [], []
        values = [totals[k] for k in PARTS]
        return dict(zip(PARTS, share_from_last_stage(values, self.mesh, self.device)))

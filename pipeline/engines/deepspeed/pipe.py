"""nodd's model as DeepSpeed's PipelineModule (train.engine=deepspeed with parallel.pp > 1).

    feed = Feed(full_model)
    module = pipeline_module(full_model, stages, feed, recompute)   # this rank's stage of it
    feed.start(micro_batches, seeds); engine.train_batch(iter(feed.indices()))

The layers: EmbedLayer (embeddings, adapters, time and position embeddings), one BlockLayer per
transformer block, HeadLayer (final norm, LM head, image heads, nodd's loss breakdown). Blocks
split evenly, the embedding on the first stage and the head on the last: the native engine's
split (pipeline/engines/native/pipelining.py), so checkpoints and exports name the same blocks.

What travels between stages is (hidden states, micro-batch index): fixed shapes (the loader's
(batch_rows, seq_len, width)), one float tensor that feeds the loss (DeepSpeed expects a gradient
for every float it sends) and the index as int64. Everything else a layer needs (masks,
positions, targets, latents) it reads from this rank's own copy of the micro-batch in `Feed`:
every stage of a pipeline has the same data-parallel rank, so the trainer hands it the same
batches. The first and the last stage both seed from the micro-batch's seed before drawing the
diffusion noise, so both see the draw a one-process run makes.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import AttentionContext
from model.batch import PackedBatch
from model.multimodal import MultimodalModel, StepOutput
from model.transformer import Block, RMSNorm
from pipeline.engines.native.pipelining import FIRST_STAGE_PARTS, LAST_STAGE_PARTS, stage_layers


class Feed:
    """This step's micro-batches and seeds, shared by the layers of one rank; the last stage
    leaves each micro-batch's loss breakdown in `outputs`."""

    def __init__(self, model: MultimodalModel):
        self.model = model  # builds each micro-batch's attention context (not a submodule: no parameters here)
        self.batches: list[PackedBatch] = []
        self.seeds: list[int] = []
        self.outputs: list[StepOutput] = []
        self._contexts: dict[int, AttentionContext] = {}

    def start(self, batches: list[PackedBatch], seeds: list[int]) -> None:
        self.batches, self.seeds, self.outputs, self._contexts = list(batches), list(seeds), [], {}

    def indices(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """What DeepSpeed's data iterator yields per micro-batch: (first stage's input, last
        stage's label), both the micro-batch index."""
        return [(torch.tensor([i]), torch.tensor([i])) for i in range(len(self.batches))]

    def batch(self, micro: torch.Tensor, seeded: bool = False) -> PackedBatch:
        i = int(micro[0])
        if seeded:
            torch.manual_seed(self.seeds[i])
        return self.batches[i]

    def context(self, micro: torch.Tensor) -> AttentionContext:
        """The micro-batch's masks and rotary angles, built once per step for all blocks here."""
        i = int(micro[0])
        if i not in self._contexts:
            self._contexts[i] = self.model.batch_context(self.batches[i])
        return self._contexts[i]


def _part(model: MultimodalModel, keep: tuple[str, ...]) -> MultimodalModel:
    """A shallow copy of `model` holding only the top-level children in `keep` (the others
    None), so a layer registers just its own parameters yet runs MultimodalModel's methods."""
    part = copy.copy(model)
    part._modules = {name: (child if name in keep else None) for name, child in model._modules.items()}
    return part


class EmbedLayer(nn.Module):
    def __init__(self, model: MultimodalModel, feed: Feed):
        super().__init__()
        self.model, self.feed = _part(model, FIRST_STAGE_PARTS), feed

    def forward(self, micro: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.feed.batch(micro, seeded=True)
        inputs, _ = self.model.diffusion_inputs(batch)
        return self.model.embed_batch(batch, inputs), micro

    def nodd_name(self, local: str) -> str:
        return local.removeprefix("model.")


class BlockLayer(nn.Module):
    def __init__(self, model: MultimodalModel, index: str, feed: Feed, recompute: bool):
        super().__init__()
        self.block: Block = model.backbone.layers[index]
        self.index, self.feed, self.recompute = index, feed, recompute

    def forward(self, args: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, micro = args
        ctx = self.feed.context(micro)
        if self.recompute and torch.is_grad_enabled():  # train.activation_checkpointing
            return checkpoint(self.block, h, ctx, use_reentrant=False), micro
        return self.block(h, ctx), micro

    def nodd_name(self, local: str) -> str:
        return f"backbone.layers.{self.index}.{local.removeprefix('block.')}"


class HeadLayer(nn.Module):
    def __init__(self, model: MultimodalModel, feed: Feed):
        super().__init__()
        self.model, self.feed = _part(model, LAST_STAGE_PARTS), feed
        self.norm: RMSNorm = model.backbone.norm

    def forward(self, args: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        h, micro = args
        batch = self.feed.batch(micro, seeded=True)
        _, velocity_target = self.model.diffusion_inputs(batch)  # the first stage's draw, again
        out = self.model.losses(self.norm(h), batch, velocity_target)
        self.feed.outputs.append(out)
        return out.loss

    def nodd_name(self, local: str) -> str:
        return f"backbone.{local}" if local.startswith("norm.") else local.removeprefix("model.")


def layers(model: MultimodalModel, feed: Feed, recompute: bool) -> list[nn.Module]:
    blocks = [BlockLayer(model, i, feed, recompute) for i in model.backbone.layers]
    return [EmbedLayer(model, feed), *blocks, HeadLayer(model, feed)]


def pipeline_module(model: MultimodalModel, stages: int, feed: Feed, recompute: bool):
    """DeepSpeed's PipelineModule over `layers(model)`, partitioned as the native engine splits
    (every rank builds the whole model, keeps its stage; call after deepspeed.init_distributed)."""
    from deepspeed.pipe import PipelineModule

    depth = model.cfg.depth

    class NoddPipeline(PipelineModule):
        def _partition_layers(self, method: str = "") -> None:
            # layer 0 embeds, 1..depth are the blocks, depth + 1 the head; DeepSpeed's own
            # methods balance counts or parameters, not this fixed split (and print it)
            starts = [1 + int(stage_layers(depth, stages, s)[0]) for s in range(stages)]
            self.parts = [0, *starts[1:], depth + 2]
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

    return NoddPipeline(layers(model, feed, recompute), num_stages=stages, loss_fn=None,
                        partition_method="nodd", activation_checkpoint_interval=0)


def nodd_named_parameters(module) -> list[tuple[str, nn.Parameter]]:
    """This stage's parameters under MultimodalModel's names (`backbone.layers.3.ffn.w2.weight`)."""
    named = []
    for name, param in module.named_parameters():
        index, _, local = name.partition(".")
        named.append((getattr(module, index).nodd_name(local), param))
    return named

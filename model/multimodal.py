"""MultimodalModel: one mixed text-and-latent transformer, three generation modes.

    cfg = ModelConfig(mode="transfusion")          # or "mar", "discrete"
    with torch.device("meta"):
        model = MultimodalModel(cfg)
    model.to_empty(device="cpu"); model.tie_weights(); model.init_weights()
    out = model(batch)                             # batch: model.batch.PackedBatch
    out.loss.backward(); out.losses -> {"text", "understanding", "image"}

Data flow: embed (token ids; latent patches through an adapter, plus a diffusion-time embedding
in transfusion; plus modality embedding) -> backbone (model/transformer.py) -> heads:
  text and understanding    LM head, next-token cross-entropy on the target positions
  transfusion image         latent_out -> velocity, MSE against x1 - x0 on generated images
  mar image                 the hidden state before each latent token conditions MARHead,
                            flow matching on that token, `diffusion_batch_mul` noise draws each
                            (masked mar and next-scale: each token's own output conditions it)
  discrete image            LM head over the code ids, cross-entropy
Next-scale prediction (model.var_scales, model/scales.py) adds a level embedding per scale.
Top-level children may be None (a pipeline stage that does not own them); forward skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from model import batch as pb
from model import scales
from model.adapters import GridEmbedding, LatentInput, LatentOutput, MaskEmbedding, TimeEmbedding
from model.attention import AttentionContext, KVCache
from model.config import ModelConfig
from model.flow import noised
from model.heads import MARHead
from model.transformer import Backbone, Init


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar to backpropagate
    losses: dict[str, torch.Tensor]  # detached breakdown: text, understanding, image
    counts: dict[str, int]  # tokens behind each part of the breakdown


class MultimodalModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        continuous = cfg.mode != "discrete"
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.width)
        self.modality_embeddings = nn.Embedding(3, cfg.width)
        self.latent_in = LatentInput(cfg) if continuous else None
        self.time_embed = TimeEmbedding(cfg.width) if cfg.mode == "transfusion" else None
        self.position_query = GridEmbedding(cfg.width) if cfg.mode == "mar" and cfg.mar_order == "random" else None
        self.patch_position = GridEmbedding(cfg.width) if cfg.patch_positions else None
        masked = cfg.mode == "mar" and cfg.mar_order == "masked"
        self.mask_embedding = MaskEmbedding(cfg.width) if masked else None
        self.scale_embedding = nn.Embedding(len(cfg.var_scales), cfg.width) if cfg.next_scale_images else None
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.latent_out = LatentOutput(cfg) if cfg.mode == "transfusion" else None
        self.mar_head = MARHead(cfg) if cfg.mode == "mar" else None
        self.tie_weights()

    @property
    def bidirectional(self) -> bool:
        return self.cfg.bidirectional_images

    def tie_weights(self) -> None:
        """Share the token embedding with the LM head (model.tie_embeddings). Again after
        `to_empty`, which gives every module a parameter of its own."""
        if self.cfg.tie_embeddings and self.lm_head is not None and self.tok_embeddings is not None:
            self.lm_head.weight = self.tok_embeddings.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (after `to_empty` from the meta device, or to reset)."""
        for param, init in self.initializers():
            init(param)

    def initializers(self) -> Iterator[tuple[nn.Parameter, Init]]:
        """Each parameter with the function that initialises it in place, in the order
        init_weights draws its random numbers. An engine that shards parameters draws each one
        whole in this order and keeps its own shard, so every layout starts from the weights of
        one process (pipeline/engines/native/materialize.py)."""
        normal = partial(nn.init.normal_, std=self.cfg.init_std)
        for module in (self.tok_embeddings, self.modality_embeddings, self.mask_embedding, self.scale_embedding):
            if module is not None:
                yield module.weight, normal
        for part in (self.latent_in, self.time_embed, self.position_query, self.patch_position, self.latent_out):
            if part is None:
                continue
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    yield module.weight, normal
                    yield module.bias, nn.init.zeros_
                elif isinstance(module, nn.GroupNorm):
                    yield module.weight, nn.init.ones_
                    yield module.bias, nn.init.zeros_
        if self.backbone is not None:
            yield from self.backbone.initializers()
        if self.lm_head is not None and not self.cfg.tie_embeddings:
            yield self.lm_head.weight, normal
        if self.mar_head is not None:
            yield from self.mar_head.initializers()

    # ---- the shared trunk (training and sampling) ---------------------------------------------
    def embed(self, tokens: torch.Tensor, modality: torch.Tensor, latents: torch.Tensor | None,
              span_grid: torch.Tensor, times: torch.Tensor | None = None,
              queries: torch.Tensor | None = None, coords: torch.Tensor | None = None,
              masked: torch.Tensor | None = None, levels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids and modality, (N, D) latent inputs for the positions where modality != TEXT,
        (N,) diffusion times (transfusion), (B, T, 3) grid coordinates of the token each position
        must predict next, or -1 (mar random order), (B, T, 3) each token's own grid coordinates
        (`patch_positions`; see batch.grid_coordinates), (B, T) bool masked latent tokens (masked
        mar: their input is the mask embedding), (B, T) scale level of each image token or -1
        (next-scale; scales.token_levels) -> (B, T, W)."""
        h = self.tok_embeddings(tokens)
        if latents is not None and latents.numel():
            lat = self.latent_in(latents, span_grid)
            if self.time_embed is not None:
                lat = lat + self.time_embed(times)
            where = (modality != pb.TEXT).unsqueeze(-1)
            h = torch.where(where, torch.zeros_like(h).masked_scatter(where, lat.to(h.dtype)), h)
        if self.mask_embedding is not None:  # called on every batch (ZeRO-3), masking nothing without images
            h = self.mask_embedding(h, masked if masked is not None else torch.zeros_like(modality, dtype=torch.bool))
        h = h + self.modality_embeddings(modality)
        if self.scale_embedding is not None:  # every batch (ZeRO-3): text-only batches add zero rows
            lv = levels if levels is not None else torch.full_like(modality, -1)
            h = h + torch.where((lv >= 0).unsqueeze(-1), self.scale_embedding(lv.clamp(min=0)), 0.0)
        if self.patch_position is not None and coords is not None:
            h = h + torch.where((modality != pb.TEXT).unsqueeze(-1), self.patch_position(coords), 0.0)
        if self.position_query is not None and queries is not None:
            h = h + torch.where((queries >= 0).all(-1, keepdim=True), self.position_query(queries.clamp(min=0)), 0.0)
        return h

    def context(self, segment_ids: torch.Tensor, span_ids: torch.Tensor, positions: torch.Tensor,
                cache: KVCache | None = None, query_len: int | None = None) -> AttentionContext:
        return AttentionContext.build(segment_ids, span_ids, positions, requested=self.cfg.attention,
                                      bidirectional=self.bidirectional, head_dim=self.cfg.head_dim,
                                      theta=self.cfg.rope_theta, cache=cache, query_len=query_len)

    def trunk(self, h: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        return self.backbone(h, ctx) if self.backbone is not None else h

    def text_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) text ids, one causal document per row -> (B, T, text_vocab_size) next-token
        logits: the plain language model (what a model started from an LLM is compared with)."""
        modality, ones = torch.zeros_like(tokens), torch.ones_like(tokens)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens).unsqueeze(-1).expand(-1, -1, 3)
        h = self.embed(tokens, modality, None, tokens.new_zeros(0, 3))
        h = self.trunk(h, self.context(ones, torch.zeros_like(tokens), positions))
        return self.lm_head(h)[..., :self.cfg.text_vocab_size]

    # ---- training -----------------------------------------------------------------------------
    def forward(self, batch: pb.PackedBatch) -> StepOutput:
        inputs, velocity_target = self.diffusion_inputs(batch)
        h = self.embed_batch(batch, inputs)
        h = self.trunk(h, self.batch_context(batch))
        return self.losses(h, batch, velocity_target)

    # The three pieces of forward, used apart by pipeline stages (first: embed_batch, every
    # stage: trunk, last: losses). diffusion_inputs draws the noise: call it first after seeding,
    # on every stage that needs its result, and each gets the same draw.
    def diffusion_inputs(self, batch: pb.PackedBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(latent inputs, velocity target): noised latents and x1 - x0 in transfusion mode."""
        if self.cfg.mode == "transfusion" and batch.latents is not None:
            return noised(batch.latents, torch.randn_like(batch.latents), batch.times)
        return batch.latents, None

    def embed_batch(self, batch: pb.PackedBatch, inputs: torch.Tensor | None) -> torch.Tensor:
        coords = None
        if self.position_query is not None or self.patch_position is not None:
            coords = pb.grid_coordinates(batch.positions, batch.span_ids)
        queries = next_grid_queries(batch, coords) if self.position_query is not None else None
        masked = None
        if self.mask_embedding is not None:
            masked = torch.zeros_like(batch.tokens, dtype=torch.bool).masked_scatter(batch.latent_mask, batch.latent_loss)
        levels = None
        if self.scale_embedding is not None:
            levels = scales.token_levels(batch.span_ids, batch.span_grid, self.cfg.var_scales)
        h = self.embed(batch.tokens, batch.modality, inputs, batch.span_grid, batch.times, queries, coords, masked,
                       levels)
        if inputs is None or not inputs.numel():  # no latents: the adapters still run, on zero rows
            no_grid = batch.span_grid[:0]
            h = h + idle(self.latent_in, h.new_zeros(0, self.cfg.patch_dim), no_grid) + idle(self.time_embed, h.new_zeros(0))
        return h

    def batch_context(self, batch: pb.PackedBatch) -> AttentionContext:
        return self.context(batch.segment_ids, batch.span_ids, batch.positions)

    def losses(self, h: torch.Tensor, batch: pb.PackedBatch, velocity_target: torch.Tensor | None) -> StepOutput:
        """Loss breakdown from the backbone's (B, T, W) output."""
        cfg = self.cfg
        parts, counts = {}, {}
        ce_kinds = {"text": pb.TEXT_LOSS, "understanding": pb.UNDERSTANDING_LOSS}
        if cfg.mode == "discrete":
            ce_kinds["image"] = pb.IMAGE_LOSS
        has_target = batch.targets != pb.IGNORE
        token_ce = self.token_cross_entropy(h[has_target], batch.targets[has_target])  # only where predicted
        kinds = batch.target_kind[has_target]
        zero = h.sum() * 0.0  # keeps the graph (and every engine's gradient hooks) intact
        for name, kind in ce_kinds.items():
            sel = kinds == kind
            counts[name] = int(sel.sum())
            parts[name] = token_ce[sel].mean() if counts[name] else zero
        if cfg.mode == "transfusion":
            parts["image"], counts["image"] = self._flow_loss(h, batch, velocity_target, zero)
        elif cfg.mode == "mar":
            parts["image"], counts["image"] = self._mar_loss(h, batch, zero)
        text_sel = (kinds == pb.TEXT_LOSS) | (kinds == pb.UNDERSTANDING_LOSS)
        text_loss = token_ce[text_sel].mean() if bool(text_sel.any()) else zero
        loss = text_loss + cfg.image_loss_weight * parts["image"]
        return StepOutput(loss, {k: v.detach() for k, v in parts.items()}, counts)

    def token_cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, W) hidden states, (N,) targets -> (N,) fp32 cross-entropy of the LM head's logits
        (an engine with a vocabulary-parallel head overrides it)."""
        return F.cross_entropy(self.lm_head(h).float(), targets, reduction="none")

    def _flow_loss(self, h, batch, velocity_target, zero):
        if velocity_target is None or not bool(batch.latent_loss.any()):
            return zero + idle(self.latent_out, h[0, :0], batch.span_grid[:0]), 0
        predicted = self.latent_out(h[batch.latent_mask], batch.span_grid).float()
        err = (predicted - velocity_target.float()).pow(2).mean(-1)  # (N,)
        return err[batch.latent_loss].mean(), int(batch.latent_loss.sum())

    def _mar_loss(self, h, batch, zero):
        """MARHead's flow loss on each generated latent, conditioned on the transformer output at
        the position before it (in order) or at its own position (masked mar: a masked token;
        next-scale: the scale token, whose input was the coarser sum)."""
        z, x1 = h[0, :0], None
        # the config, not the embeddings, says which: a last pipeline stage holds no embeddings
        if batch.latents is not None and self.cfg.own_position_images:
            wanted = batch.latent_targets if batch.latent_targets is not None else batch.latents
            z, x1 = h[batch.latent_mask][batch.latent_loss], wanted[batch.latent_loss]
        elif batch.latents is not None:
            sources = batch.target_kind == pb.IMAGE_LOSS  # positions whose next token is a generated latent
            full = torch.zeros(*batch.tokens.shape, batch.latents.shape[-1], dtype=batch.latents.dtype,
                               device=batch.latents.device)
            full[batch.latent_mask] = batch.latents
            z, x1 = h[sources], full[:, 1:][sources[:, :-1]]  # x1: the latent right after each source
        if not len(z):
            return zero + idle(self.mar_head, h.new_zeros(0, self.cfg.patch_dim), h.new_zeros(0), h[0, :0]), 0
        return self.mar_head_loss(z, x1), len(z)

    def mar_head_loss(self, z: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Flow matching on each token, `diffusion_batch_mul` noise/time draws per token (MAR)."""
        k = self.cfg.diffusion_batch_mul
        z, x1 = z.repeat(k, 1), x1.repeat(k, 1).float()
        t = pb.sample_times(len(x1), self.cfg.time_sampling).to(x1.device)
        x_t, target = noised(x1, torch.randn_like(x1), t)
        return (self.mar_head(x_t, t, z).float() - target).pow(2).mean()


def idle(module: nn.Module | None, *inputs: torch.Tensor) -> torch.Tensor | float:
    """0 x the module's output on zero rows. A batch without images (or without generated ones)
    would leave the adapters or image heads out of the graph, yet every engine needs each module
    run on every rank, every micro-batch: FSDP and DDP expect a gradient for every parameter
    (FSDP2's reduce-scatter otherwise mismatches in size and the job dies), and ZeRO-3 gathers a
    module's parameters when it is called (a rank that skips it hangs the others). The module
    runs, its parameters get exact zero gradients, nothing else reads them (a partitioned ZeRO-3
    parameter holds no values outside its module's forward)."""
    if module is None:
        return 0.0
    return module(*inputs).sum() * 0.0


def next_grid_queries(batch: pb.PackedBatch, coords: torch.Tensor) -> torch.Tensor:
    """(B, T, 3): at positions that predict a latent token, that token's grid coordinates
    (t, h, w) inside its image (`coords`, from batch.grid_coordinates); -1 elsewhere. Feeds
    MAR's random-order position queries."""
    queries = torch.full_like(coords, -1)
    predicts = batch.target_kind[:, :-1] == pb.IMAGE_LOSS
    queries[:, :-1] = torch.where(predicts.unsqueeze(-1), coords[:, 1:], -1)
    return queries

"""One megatron pipeline stage of nodd's model: nodd's embeddings and adapters (first stage),
megatron-core's TransformerBlock with this stage's layers, nodd's heads and losses (last stage).

    stage = MegatronStage(config, nodd_part, block, pre_process, post_process, core_attention)
    out = stage(batch, seed)    # first/middle stages: (T, B, W) hidden states; last: StepOutput

What travels between stages is only the (T, B, W) hidden state megatron's schedules send; every
other input (ids, masks, positions, targets, latents) each stage reads from its own copy of the
micro-batch, and the noise is drawn from the micro-batch's seed on the first and the last stage
alike, as the native engine's pipeline does. Under tensor parallelism the LM head is split by
vocabulary rows (`VocabParallelHead`); the other nodd parts are replicated on the
tensor-parallel ranks, with their gradients averaged over them (megatron's
`average_gradients_across_tp_domain`).
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.enums import ModelType
from megatron.core.tensor_parallel import ColumnParallelLinear, vocab_parallel_cross_entropy
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from model.multimodal import MultimodalModel
from pipeline.engines.megatron.backbone import block_mask_argument, mark_tensor_parallel, rotary_freqs
from pipeline.engines.megatron.config import CoreAttention

MASKED_LOGIT = -1e30  # exp() of it is exactly 0 in fp32: padded vocabulary rows never win


class VocabParallelHead(nn.Module):
    """The LM head split by vocabulary rows over the tensor-parallel ranks (megatron's
    ColumnParallelLinear + vocab_parallel_cross_entropy). The vocabulary is padded to a multiple
    of tp and the padded rows' logits are masked to MASKED_LOGIT, so the softmax is the
    unpadded one exactly (a demo vocabulary of 335 trains at tp=2)."""

    def __init__(self, config: TransformerConfig, width: int, vocab: int, tp_rank: int, tp: int):
        super().__init__()
        self.vocab, self.rows = vocab, -(-vocab // tp)  # rows per rank
        self.start = tp_rank * self.rows
        self.linear = ColumnParallelLinear(width, self.rows * tp, config=config, init_method=config.init_method,
                                           bias=False, gather_output=False)
        mark_tensor_parallel(self.linear)

    @torch.no_grad()
    def load_full(self, weight: torch.Tensor) -> None:
        """This rank's rows of the (vocab, width) weight; padded rows are zero."""
        local = self.linear.weight
        local.zero_()
        rows = weight[self.start:self.start + self.rows]
        local[:len(rows)].copy_(rows)

    def sharded_tensor(self, key: str, metadata: dict):
        """dist_checkpointing's entry: this rank's rows of one (padded vocab, width) tensor.
        The padding depends on tp, so the shape may differ between layouts: allow_shape_mismatch
        (as megatron's own output layer) reads the rows both have and zeros the rest, which are
        the zero padded rows."""
        from megatron.core.utils import make_tp_sharded_tensor_for_checkpoint

        return make_tp_sharded_tensor_for_checkpoint(self.linear.weight, key, tp_axis=0, allow_shape_mismatch=True,
                                                     tp_group=parallel_state.get_tensor_model_parallel_group(),
                                                     dp_cp_group=metadata["dp_cp_group"])

    def local_rows(self) -> torch.Tensor:
        """This rank's real (unpadded) rows of the weight."""
        return self.linear.weight[:max(0, min(self.rows, self.vocab - self.start))]

    def cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, _ = self.linear(h)
        ids = torch.arange(self.start, self.start + self.rows, device=logits.device)
        logits = logits.float().masked_fill(ids >= self.vocab, MASKED_LOGIT)
        return vocab_parallel_cross_entropy(logits, targets)


class StagePart(MultimodalModel):
    """nodd's model as one stage holds it: no backbone (the block replaces it), the embeddings
    and adapters only on the first stage, the heads only on the last (pipelining.split_model)."""

    def token_cross_entropy(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(self.lm_head, VocabParallelHead):
            return self.lm_head.cross_entropy(h, targets)
        return super().token_cross_entropy(h, targets)


class MegatronStage(MegatronModule):
    def __init__(self, config: TransformerConfig, part: StagePart, block: TransformerBlock, pre_process: bool,
                 post_process: bool, core_attention: CoreAttention, first_layer: int = 0):
        super().__init__(config=config)
        self.first_layer = first_layer  # the global index of the block's first layer
        self.model_type = ModelType.encoder_or_decoder  # what megatron's schedules ask every model chunk
        # finalize_model_grads asks; the embedding (first stage) and LM head (last) are never tied
        # across stages (ParallelConfig.check_model refuses tie_embeddings with pp > 1)
        self.share_embeddings_and_output_weights = False
        self.part, self.decoder = part, block
        self.pre_process, self.post_process, self.core_attention = pre_process, post_process, core_attention
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            for p in part.parameters():
                if not getattr(p, "tensor_model_parallel", False):
                    p.average_gradients_across_tp_domain = True

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata: dict | None = None) -> dict:
        """What megatron's dist_checkpointing saves of this stage, in keys that do not depend on the
        layout, so that a checkpoint loads under any tp / pp / dp: the block's layers under their
        global layer numbers with their tensor-parallel axes (megatron's own entries), nodd's
        parts replicated, and the LM head as one "part.lm_head.weight" whether tp splits it or
        not. The local layers' `_extra_state` entries are left out: they are empty (Transformer
        Engine keeps fp8 scales there), and megatron keys them by tp degree, so a checkpoint
        written under tp=2 would not load under tp=1."""
        from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group, make_sharded_tensors_for_checkpoint

        metadata = ensure_metadata_has_dp_cp_group(metadata)
        entries = self.decoder.sharded_state_dict(f"{prefix}decoder.", metadata=metadata)
        replicated = {k: v for k, v in self.part.state_dict(keep_vars=True).items() if not k.startswith("lm_head.")}
        entries.update(make_sharded_tensors_for_checkpoint(
            replicated, f"{prefix}part.", {}, tp_group=parallel_state.get_tensor_model_parallel_group(),
            dp_cp_group=metadata["dp_cp_group"]))
        head, key = self.part.lm_head, f"{prefix}part.lm_head.weight"
        if isinstance(head, VocabParallelHead):
            entries[f"{prefix}part.lm_head.linear.weight"] = head.sharded_tensor(key, metadata)
        elif head is not None and not self.part.cfg.tie_embeddings:
            entry = make_sharded_tensors_for_checkpoint(
                {key: head.weight}, "", {}, tp_group=parallel_state.get_tensor_model_parallel_group(),
                dp_cp_group=metadata["dp_cp_group"])[key]
            entry.allow_shape_mismatch = True  # tp > 1 pads the rows (VocabParallelHead.sharded_tensor)
            entries[key] = entry
        return {k: v for k, v in entries.items() if not k.endswith("_extra_state")}

    def set_input_tensor(self, input_tensor) -> None:
        """The schedules hand a later stage its input here (a list of one tensor)."""
        self.decoder.set_input_tensor(input_tensor[0] if isinstance(input_tensor, list) else input_tensor)

    def forward(self, batch, seed: int):
        torch.manual_seed(seed)
        m = self.part
        inputs, velocity_target = m.diffusion_inputs(batch) if (self.pre_process or self.post_process) else (None, None)
        h = m.embed_batch(batch, inputs).transpose(0, 1).contiguous() if self.pre_process else None
        mask = block_mask_argument(m.batch_context(batch), batch.segment_ids, batch.span_ids, m.bidirectional,
                                   self.core_attention)
        h = self.decoder(h, mask, rotary_pos_emb=rotary_freqs(batch.positions, m.cfg.head_dim, m.cfg.rope_theta,
                                                                self.core_attention))
        if not self.post_process:
            return h
        return m.losses(h.transpose(0, 1), batch, velocity_target)

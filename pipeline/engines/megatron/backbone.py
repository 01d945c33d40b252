"""nodd's backbone as a megatron-core TransformerBlock: the config, the layer spec, the core
attention and the rotary angles.

The block is megatron-core's own (local layer spec: ColumnParallelLinear / RowParallelLinear,
SelfAttention with grouped query heads and qk-norm, a SwiGLU MLP, torch RMSNorm), built so that it
computes what model/transformer.py computes: no biases, no dropout, RMSNorm with nodd's epsilon,
interleaved rotary pairs. Three things are set on purpose:

- The mask type is `arbitrary`. The GPT spec says `causal`, and with the fused softmax (bf16 on
  CUDA) that path ignores a given mask, which would silently turn transfusion's bidirectional
  image spans causal.
- The core attention. `"nodd"` (default): `NoddCoreAttention` rotates queries and keys with
  nodd's complex multiply and runs model/attention.py's `attend` (SDPA per document on CPU, flex
  or flash-attn varlen on GPU) on the `AttentionContext` that rides in megatron's
  `attention_mask` argument, which SelfAttention hands through unread (NeMo's DiT passes its own
  data the same way). `"local"`: megatron's rotary and DotProductAttention on the dense mask
  (True = masked, the inverse of nodd's); it materialises (B, heads, T, T) scores, fine for tests
  and short rows, not for long image sequences. `"te"`: Transformer Engine's DotProductAttention
  on the same dense mask (GPU only; written, not run here).
- The SwiGLU: pipeline/engines/megatron/swiglu.py's module, whose backward does not concatenate.

For `"local"`, nodd's 3-axis rotary angles become megatron's rotary embedding: (T, B, 1, head_dim)
angles with each pair's angle repeated (`rotary_interleaved`), per row, since every row has its
own positions. `"nodd"` skips megatron's rotary (rotary_pos_emb=None; qk-norm still comes first,
as in SelfAttention): its rotate-half form recomputes cos and sin per layer and concatenates
twice per tensor (with the MLP's chunk backward, `aten::cat` was 15% of the one-process CPU step's
op time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from core.errors import ConfigError
from model.attention import AttentionContext, attend
from model.config import ModelConfig
from model.masks import dense_mask
from model.rope import apply_rotary, rotary_phases
from pipeline.engines.megatron.config import CoreAttention
from pipeline.engines.megatron.swiglu import SwiGLU

def transformer_config(model: ModelConfig, *, tp: int = 1, pp: int = 1, dtype: torch.dtype = torch.float32,
                       **overrides) -> TransformerConfig:
    """The TransformerConfig of nodd's backbone under tensor / pipeline parallel degrees tp, pp."""
    settings = dict(
        num_layers=model.depth, hidden_size=model.width, num_attention_heads=model.heads,
        num_query_groups=model.num_kv_heads, kv_channels=model.head_dim, ffn_hidden_size=model.hidden,
        normalization="RMSNorm", layernorm_epsilon=model.norm_eps, qk_layernorm=model.qk_norm,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, rotary_interleaved=True,
        hidden_dropout=0.0, attention_dropout=0.0,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        # nodd copies its own initial weights in; fusions need Apex / TE kernels or CUDA
        use_cpu_initialization=True, perform_initialization=False, apply_rope_fusion=False,
        masked_softmax_fusion=False, bias_activation_fusion=False, bias_dropout_fusion=False,
        gradient_accumulation_fusion=False, persist_layer_norm=False,
        use_te_activation_func=True,  # builds layer_spec's SwiGLU module (no TE needed; see swiglu.py)
    )
    settings.update(overrides)
    return TransformerConfig(**settings)


class NoddCoreAttention(MegatronModule):
    """megatron's core-attention slot filled with nodd's rotary and `attend`: (T, B, heads, d)
    queries and (T, B, kv_heads, d) keys/values of this tensor-parallel rank, not yet rotated ->
    (T, B, heads * d)."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: float | None = None, softmax_scale: float | None = None,
                 cp_comm_type: str | None = None, pg_collection=None):
        super().__init__(config=config)
        if softmax_scale is not None and softmax_scale != config.kv_channels ** -0.5:
            raise ValueError("NoddCoreAttention uses the 1/sqrt(head_dim) softmax scale")

    def forward(self, query, key, value, attention_mask: AttentionContext, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if not isinstance(attention_mask, AttentionContext) or packed_seq_params is not None:
            raise TypeError("NoddCoreAttention expects nodd's AttentionContext as the attention mask")
        # (B, heads, T, d) laid out (B, T, heads, d), as model/transformer.py hands them to
        # attend (one copy each); not measured against plain permuted views
        q, k, v = (x.transpose(0, 1).contiguous().transpose(1, 2) for x in (query, key, value))
        q, k = apply_rotary(q, attention_mask.rotation), apply_rotary(k, attention_mask.rotation)
        out = attend(q, k, v, attention_mask)
        return out.permute(2, 0, 1, 3).flatten(2)


def layer_spec(model: ModelConfig, core_attention: CoreAttention) -> ModuleSpec:
    spec = get_gpt_layer_local_spec(qk_layernorm=model.qk_norm, normalization="RMSNorm")
    attention = spec.submodules.self_attention
    attention.params = {**attention.params, "attn_mask_type": AttnMaskType.arbitrary}
    if core_attention == "nodd":
        attention.submodules.core_attention = NoddCoreAttention
    elif core_attention == "te":  # GPU only, not run here (no device): check_transformer_engine first
        from megatron.core.extensions.transformer_engine import TEDotProductAttention

        attention.submodules.core_attention = TEDotProductAttention
    spec.submodules.mlp.submodules.activation_func = SwiGLU
    return spec


def check_transformer_engine(core_attention: CoreAttention) -> None:
    """core_attention="te" on a machine without Transformer Engine (megatron-core then puts mocks
    in its TE classes): a ConfigError, raised where the engine builds, on the training node."""
    from megatron.core.extensions.transformer_engine import HAVE_TE

    if core_attention == "te" and not (HAVE_TE and torch.cuda.is_available()):
        raise ConfigError("megatron.core_attention=te needs NVIDIA Transformer Engine and a GPU (pip install "
                          "'transformer-engine[pytorch]'); use megatron.core_attention=nodd or local")


def build_block(config: TransformerConfig, model: ModelConfig, core_attention: CoreAttention = "nodd", *,
                pre_process: bool = True, post_process: bool = True, vp_stage: int | None = None) -> TransformerBlock:
    """This pipeline stage's layers (megatron picks them from the pp rank and, interleaved, the
    virtual stage), with the final norm on the last stage. Parameters are allocated but not
    initialised: load nodd's weights next."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build

    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    submodules = TransformerBlockSubmodules(layer_specs=[layer_spec(model, core_attention)] * layers,
                                            layer_norm=WrappedTorchNorm)
    block = TransformerBlock(config, submodules, post_layer_norm=post_process, pre_process=pre_process,
                             post_process=post_process, vp_stage=vp_stage)
    mark_tensor_parallel(block)
    return block


def recompute_layers(block: TransformerBlock) -> None:
    """train.activation_checkpointing: every layer's activations recomputed in backward, with
    torch's non-reentrant checkpoint around each TransformerLayer (its forward replaced on the
    instance, so parameter names do not change). megatron's own recompute
    (`recompute_granularity="full"`) cannot carry nodd's core attention: its CheckpointFunction
    passes the layer inputs to `save_for_backward`, which refuses the AttentionContext riding in
    `attention_mask`, and it reads the CUDA RNG state."""
    for layer in block.layers:
        forward = layer.forward

        def recomputed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        layer.forward = recomputed


def mark_tensor_parallel(module: torch.nn.Module) -> None:
    """Tag the split weights as megatron's initialisers would: with perform_initialization=False
    it never sets `tensor_model_parallel`, and untagged shards count as replicated copies (the
    gradient norm then sees them on tensor-parallel rank 0 only, and finalize_model_grads may
    average them over the ranks)."""
    for m in module.modules():
        if isinstance(m, (ColumnParallelLinear, RowParallelLinear)) and m.weight is not None:
            set_tensor_model_parallel_attributes(m.weight, True, 0 if isinstance(m, ColumnParallelLinear) else 1, 1)


def rotary_freqs(positions: torch.Tensor, head_dim: int, theta: float,
                 core_attention: CoreAttention) -> torch.Tensor | None:
    """(B, T, 3) positions -> (T, B, 1, head_dim) fp32 angles: model/rope.py's frequency j turns
    with axis j % 3, and megatron's interleaved rotation pairs channels (2j, 2j+1). None for
    NoddCoreAttention, which rotates with the context's own factors."""
    if core_attention == "nodd":
        return None
    angles = rotary_phases(positions, head_dim, theta)  # (B, T, head_dim/2)
    return angles.repeat_interleave(2, dim=-1).transpose(0, 1).unsqueeze(2)


def block_mask_argument(ctx: AttentionContext, segment_ids: torch.Tensor, span_ids: torch.Tensor,
                        bidirectional: bool, core_attention: CoreAttention):
    """What goes in TransformerBlock's `attention_mask`: the context itself for NoddCoreAttention,
    the (B, 1, T, T) mask with megatron's polarity (True = masked) for DotProductAttention."""
    if core_attention == "nodd":
        return ctx
    return ~dense_mask(segment_ids, span_ids, bidirectional)[:, None]

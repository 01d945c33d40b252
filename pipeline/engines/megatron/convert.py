"""nodd's backbone weights <-> a megatron-core TransformerBlock's, exactly, under tensor parallelism.

    local = to_megatron(nodd_weights, first_layer, num_layers, tp_rank, tp, final_norm)
    nodd_weights = from_megatron([local of tp rank 0, 1, ...], first_layer, final_norm)

nodd names are MultimodalModel's (`backbone.layers.3.attention.wqkv.weight`); megatron names are
the block's own, layers numbered from 0 within a pipeline stage (`layers.1.self_attention.
linear_qkv.weight` on a stage that starts at layer 2). The layouts agree except for SwiGLU:

  wqkv [q_1..q_g, k, v] per kv head   = linear_qkv (megatron's layout); a column shard is whole groups
  wo, w2                              = linear_proj, linear_fc2; a row-parallel shard is columns
  w1 (gate), w3 (up)                  -> linear_fc1 = [gate; up] of this tensor-parallel rank's units
  norms, qk-norms                     = replicated
"""

from __future__ import annotations

import torch

# nodd layer suffix -> (megatron layer suffix, dim split under tensor parallelism or None)
LAYER = {
    "attention_norm.weight": ("input_layernorm.weight", None),
    "attention.wqkv.weight": ("self_attention.linear_qkv.weight", 0),
    "attention.wo.weight": ("self_attention.linear_proj.weight", 1),
    "attention.q_norm.weight": ("self_attention.q_layernorm.weight", None),
    "attention.k_norm.weight": ("self_attention.k_layernorm.weight", None),
    "ffn_norm.weight": ("pre_mlp_layernorm.weight", None),
    "ffn.w2.weight": ("mlp.linear_fc2.weight", 1),
}
GATE, UP, FC1 = "ffn.w1.weight", "ffn.w3.weight", "mlp.linear_fc1.weight"
FINAL_NORM = ("backbone.norm.weight", "final_layernorm.weight")


def to_megatron(nodd: dict[str, torch.Tensor], first_layer: int, num_layers: int, tp_rank: int = 0, tp: int = 1,
                final_norm: bool = True) -> dict[str, torch.Tensor]:
    """This tensor-parallel rank's block weights for layers first_layer .. first_layer + num_layers - 1."""
    out = {}
    for local in range(num_layers):
        src, dst = f"backbone.layers.{first_layer + local}.", f"layers.{local}."
        for name, (target, dim) in LAYER.items():
            if src + name in nodd:
                full = nodd[src + name]
                out[dst + target] = full if dim is None else full.chunk(tp, dim)[tp_rank]
        out[dst + FC1] = torch.cat([nodd[src + GATE].chunk(tp, 0)[tp_rank], nodd[src + UP].chunk(tp, 0)[tp_rank]])
    if final_norm:
        out[FINAL_NORM[1]] = nodd[FINAL_NORM[0]]
    return {k: v.clone() for k, v in out.items()}


def from_megatron(shards: list[dict[str, torch.Tensor]], first_layer: int, final_norm: bool = True) -> dict[str, torch.Tensor]:
    """nodd names and full tensors from every tensor-parallel rank's block weights (rank order)."""
    first = shards[0]
    layers = sorted({int(k.split(".")[1]) for k in first if k.startswith("layers.")})
    out = {}
    for local in layers:
        src, dst = f"layers.{local}.", f"backbone.layers.{first_layer + local}."
        for name, (target, dim) in LAYER.items():
            if src + target in first:
                parts = [s[src + target] for s in shards]
                out[dst + name] = parts[0] if dim is None else torch.cat(parts, dim)
        halves = [s[src + FC1].chunk(2, 0) for s in shards]
        out[dst + GATE] = torch.cat([gate for gate, _ in halves])
        out[dst + UP] = torch.cat([up for _, up in halves])
    if final_norm:
        out[FINAL_NORM[0]] = first[FINAL_NORM[1]]
    return out

"""The backbone: a decoder-only transformer (RMSNorm, SwiGLU, rotary GQA, optional qk-norm).

Its interface is deliberately small so an engine can swap it (e.g. for a megatron-core
TransformerBlock) without touching adapters and heads:

    h = backbone(h, ctx)     # (B, T, width) -> (B, T, width); ctx = attention.AttentionContext

Layers live in a ModuleDict keyed "0".."depth-1" so pipeline stages can drop layers by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.attention import AttentionContext, attend
from model.config import ModelConfig
from model.rope import apply_rotary

Init = Callable[[torch.Tensor], object]  # fills a parameter in place (nn.init.normal_, ...)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.head_dim = layer, cfg.head_dim
        self.group = cfg.heads // cfg.num_kv_heads  # query heads per key/value head
        # One fused projection, grouped per key/value head: [q_1..q_group, k, v] for each kv head
        # (megatron-core's linear_qkv layout). One larger matmul beats three small ones on CPUs,
        # and a column-wise tensor-parallel shard then holds whole groups: its own q, k and v.
        self.wqkv = nn.Linear(cfg.width, cfg.num_kv_heads * (self.group + 2) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.heads * cfg.head_dim, cfg.width, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        b, t, _ = x.shape
        # -1: the kv heads held here (all of them, or this rank's under tensor parallelism)
        qkv = self.wqkv(x).view(b, t, -1, self.group + 2, self.head_dim)
        q = qkv[..., :self.group, :].reshape(b, t, -1, self.head_dim)  # (B, T, heads, d)
        k, v = qkv[..., self.group, :], qkv[..., self.group + 1, :]  # (B, T, kv_heads, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # (B, heads, T, d)
        q, k = apply_rotary(q, ctx.rotation), apply_rotary(k, ctx.rotation)
        if ctx.cache is not None:
            k, v = ctx.cache.update(self.layer, k, v)
        out = attend(q, k, v, ctx)  # (B, heads, T, d)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), gate (w1) and up (w3) as two projections (torchtitan's
    layout). Each output is contiguous, so silu and the product run on the fast elementwise path
    and backward needs no concatenation; a column-wise tensor-parallel shard of each holds the
    same hidden units. (One fused, row-interleaved w13 took gate and up as stride-2 views: silu
    ran 6x slower on them and its backward concatenated; the two matmuls cost the same FLOPs.)"""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)
        self.w3 = nn.Linear(width, hidden, bias=False)
        self.w2 = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.attention = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.ffn = FeedForward(cfg.width, cfg.hidden)

    def forward(self, h: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        h = h + self.attention(self.attention_norm(h), ctx)
        return h + self.ffn(self.ffn_norm(h))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleDict({str(i): Block(cfg, i) for i in range(cfg.depth)})
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        # Recompute each block in backward instead of keeping its activations (trainer option
        # train.activation_checkpointing): about 1/3 more compute for far less memory.
        self.checkpoint_blocks = False

    def forward(self, h: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        for block in self.layers.values():
            h = checkpoint(block, h, ctx, use_reentrant=False) if recompute else block(h, ctx)
        return self.norm(h) if self.norm is not None else h

    def initializers(self) -> Iterator[tuple[nn.Parameter, Init]]:
        """Normal(init_std); residual output projections scaled by 1/sqrt(2*depth) (GPT-2); norms 1."""
        std = self.cfg.init_std
        for block in self.layers.values():
            for name, module in block.named_modules():
                if isinstance(module, nn.Linear):
                    scale = 1 / math.sqrt(2 * self.cfg.depth) if name.endswith(("wo", "w2")) else 1.0
                    yield module.weight, partial(nn.init.normal_, std=std * scale)
                elif isinstance(module, RMSNorm):
                    yield module.weight, nn.init.ones_
        if self.norm is not None:
            yield self.norm.weight, nn.init.ones_

"""Attention backends and the per-forward context that every layer shares.

  sdpa   F.scaled_dot_product_attention with a mask made from the ids. The reference; any device;
         trains on CPU. Packed rows of several documents are cut into one row per document first
         (masks.document_slots), so attention costs the sum of squared document lengths, not the
         squared row; on CPU in bf16, short documents attend in fp32 (faster there, see below).
  flex   FlexAttention with a block mask built from the ids. torch 2.13 has no flex backward on
         CPU, so on CPU it serves no-grad passes only (compiled forward); on GPU it trains.
  flash  flash-attn varlen (CUDA). Only document-causal masks: mar and discrete, never transfusion.
  auto   the fastest valid one for device, mode and grad mode (`select_backend`).

The context is built once per forward (masks are the same for every layer); a `KVCache` makes it
process only new tokens against cached keys/values (sampling).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from core.errors import ConfigError
from model import masks
from model.rope import rotary_angles

# SDPA's CPU flash kernel in bf16 is slow on short rows: fwd+bwd at 100 tokens took 7.0 ms in bf16
# against 3.0 ms for the same call upcast to fp32 (2.5 ms in fp32 itself); from ~256 tokens bf16
# wins. So on CPU, bf16 queries over at most this many keys attend in fp32.
CPU_BF16_UPCAST_MAX_KEYS = 192


def flash_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def select_backend(requested: str, device: torch.device, bidirectional: bool, grad: bool) -> str:
    """Resolve `auto` and refuse combinations that cannot run, saying why."""
    if requested == "flash":
        if bidirectional:
            raise ConfigError("attention='flash' cannot express transfusion's bidirectional image spans; "
                              "use 'flex' or 'sdpa'")
        if device.type != "cuda" or not flash_available():
            raise ConfigError("attention='flash' needs a CUDA device and the flash-attn package "
                              "(pip install 'nodd[gpu]'); use 'auto' to pick a backend that runs here")
        return "flash"
    if requested == "flex" and device.type == "cpu" and grad:
        raise ConfigError("attention='flex' has no backward on CPU in torch 2.13; train on CPU with "
                          "'sdpa' (or 'auto'), keep 'flex' for sampling and evaluation")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "flash" if not bidirectional and flash_available() else "flex"
    # CPU: sdpa, also without grad. It attends per document (masks.document_slots): 166 ms against
    # flex's 284 ms on a packed 4,096-token row of 40 documents (bench/README.md), with no compile.
    return "sdpa"


class KVCache:
    """Keys and values of every layer for B rows, grown chunk by chunk during sampling."""

    def __init__(self, depth: int, batch: int, kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str, dtype: torch.dtype):
        shape = (batch, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.length = 0  # tokens stored (same for every layer once a forward finishes)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, Hkv, L, d) keys/values after the cached ones; return all of them."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} tokens; {end} needed")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n


@dataclass
class AttentionContext:
    """What every attention layer needs for one forward, computed once."""

    backend: str
    rotation: torch.Tensor  # (B, 1, Tq, head_dim/2) complex rotary factors
    mask: torch.Tensor | None = None  # sdpa: (B, 1, Tq, Tk) bool, or (n, 1, L, L) over `slots`
    slots: masks.DocumentSlots | None = None  # sdpa: packed documents cut into rows of their own
    block_mask: object = None  # flex
    cu_seqlens: torch.Tensor | None = None  # flash: (docs+1,) int32 over the flattened batch
    max_seqlen: int = 0
    cache: KVCache | None = None
    _additive: dict = field(default_factory=dict)

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The sdpa mask as 0 / -inf in the query dtype, made once per forward: SDPA converts a
        boolean mask in every call, which cost more than the attention itself at 4k tokens on CPU."""
        if dtype not in self._additive:
            zero = torch.zeros((), dtype=dtype, device=self.mask.device)
            self._additive[dtype] = torch.where(self.mask, zero, torch.finfo(dtype).min)
        return self._additive[dtype]

    @classmethod
    def build(cls, segment_ids: torch.Tensor, span_ids: torch.Tensor, positions: torch.Tensor, *,
              requested: str, bidirectional: bool, head_dim: int, theta: float,
              cache: KVCache | None = None, query_len: int | None = None) -> "AttentionContext":
        """Ids cover the whole sequence (cached part included); with a cache only the last
        `query_len` positions are new queries, and the mask keeps their rows only."""
        q = query_len or segment_ids.shape[1]
        rotation = rotary_angles(positions[:, -q:], head_dim, theta)
        if cache is not None:  # sampling: a few new tokens against the cache, dense mask
            mask = masks.dense_mask(segment_ids, span_ids, bidirectional)[:, None, -q:]
            return cls("sdpa", rotation, mask=mask, cache=cache)
        backend = select_backend(requested, segment_ids.device, bidirectional, torch.is_grad_enabled())
        if backend == "sdpa":
            slots = masks.document_slots(segment_ids, span_ids, bidirectional)
            if slots is not None:
                return cls(backend, rotation, mask=slots.mask, slots=slots)
            return cls(backend, rotation, mask=masks.dense_mask(segment_ids, span_ids, bidirectional)[:, None])
        if backend == "flex":
            return cls(backend, rotation, block_mask=masks.block_mask(segment_ids, span_ids, bidirectional))
        lengths = masks.document_lengths(segment_ids)
        cu = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
        return cls(backend, rotation, cu_seqlens=cu, max_seqlen=int(lengths.max()))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
    """(B, H, Tq, d) queries, (B, Hkv, Tk, d) keys/values -> (B, H, Tq, d)."""
    if ctx.backend == "sdpa":
        return _sdpa(q, k, v, ctx) if ctx.slots is None else _sdpa_per_document(q, k, v, ctx)
    if ctx.backend == "flex":
        flex = masks.compiled_flex("flex_attention")
        return flex(q, k, v, block_mask=ctx.block_mask, enable_gqa=k.shape[1] != q.shape[1])
    return _flash_varlen(q, k, v, ctx)


def _sdpa(q, k, v, ctx: AttentionContext) -> torch.Tensor:
    """SDPA under ctx.mask (as an additive mask; see AttentionContext.additive_mask)."""
    gqa = k.shape[1] != q.shape[1]
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.shape[2] <= CPU_BF16_UPCAST_MAX_KEYS:
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=gqa,
                                             attn_mask=ctx.additive_mask(torch.float32))
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.additive_mask(q.dtype), enable_gqa=gqa)


def _sdpa_per_document(q, k, v, ctx: AttentionContext) -> torch.Tensor:
    """SDPA on the documents cut out of their packed rows, put back in place; padding tokens
    (which attend only to themselves) get their own value."""
    b, h, t, d = q.shape
    slots = ctx.slots

    def tokens(x):  # (B, H', T, d) -> (B*T, H', d)
        return x.transpose(1, 2).reshape(b * t, x.shape[1], d)

    def cut(x):  # (B, H', T, d) -> (n, H', L, d)
        return tokens(x).index_select(0, slots.gather).view(slots.n, slots.length, x.shape[1], d).transpose(1, 2)

    out = _sdpa(cut(q), cut(k), cut(v), ctx).transpose(1, 2).reshape(slots.n * slots.length, h, d)
    own = tokens(v).repeat_interleave(h // v.shape[1], 1) if v.shape[1] != h else tokens(v)
    out = torch.where(slots.padding[:, None, None], own, out.index_select(0, slots.scatter))
    return out.view(b, t, h, d).transpose(1, 2)


def _flash_varlen(q, k, v, ctx: AttentionContext) -> torch.Tensor:  # pragma: no cover - CUDA only
    from flash_attn import flash_attn_varlen_func

    b, h, t, d = q.shape
    flat = lambda x: x.transpose(1, 2).reshape(b * t, x.shape[1], d)  # noqa: E731  (B*T, heads, d)
    out = flash_attn_varlen_func(flat(q), flat(k), flat(v), ctx.cu_seqlens, ctx.cu_seqlens,
                                 ctx.max_seqlen, ctx.max_seqlen, causal=True)
    return out.reshape(b, t, h, d).transpose(1, 2)

"""Attention masks derived from ids, as small composable rules (never stored dense in a batch).

A query q may attend to a key k when both are in the same document and either k comes no later
than q (causal), or - in bidirectional mode (transfusion) - both belong to the same image span.
Padding has document id 0 and attends only to itself: no row of a mask is ever empty, and a long
run of padding does not become one long causal document that flex/sdpa would spend time on.
"""

from __future__ import annotations

import torch


def allowed(q_seg, k_seg, q_span, k_span, q_idx, k_idx, bidirectional: bool):
    """The rule itself, on broadcastable tensors (also the FlexAttention mask_mod body)."""
    visible = k_idx <= q_idx
    if bidirectional:
        visible = visible | ((q_span == k_span) & (q_span > 0))
    return (q_seg == k_seg) & visible & ((q_seg > 0) | (q_idx == k_idx))


def dense_mask(segment_ids: torch.Tensor, span_ids: torch.Tensor, bidirectional: bool) -> torch.Tensor:
    """(B, T) ids -> (B, T, T) bool, True where query row may attend to key column."""
    t = segment_ids.shape[1]
    idx = torch.arange(t, device=segment_ids.device)
    return allowed(segment_ids[:, :, None], segment_ids[:, None, :], span_ids[:, :, None], span_ids[:, None, :],
                   idx[:, None], idx[None, :], bidirectional)


def block_mask(segment_ids: torch.Tensor, span_ids: torch.Tensor, bidirectional: bool, block_size: int = 128):
    """FlexAttention BlockMask for the same rule: blocks that are all False are skipped entirely,
    which is what makes flex fast on packed sequences (most blocks cross documents). Built by a
    compiled create_block_mask: eager evaluates all T*T pairs (250 ms at 4k tokens on CPU),
    compiled takes ~20 ms after a one-off compile per sequence length."""

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(segment_ids[b, q_idx], segment_ids[b, kv_idx], span_ids[b, q_idx], span_ids[b, kv_idx],
                       q_idx, kv_idx, bidirectional)

    b, t = segment_ids.shape
    create = compiled_flex("create_block_mask")
    return create(mask_mod, b, None, t, t, device=segment_ids.device, BLOCK_SIZE=block_size)


_COMPILED: dict[str, object] = {}


def compiled_flex(name: str):
    """`flex_attention` or `create_block_mask`, torch.compile'd once per process: both are only
    fast compiled, and on CPU flex attention runs only compiled."""
    if name not in _COMPILED:
        from torch.nn.attention import flex_attention

        _COMPILED[name] = torch.compile(getattr(flex_attention, name), dynamic=False)
    return _COMPILED[name]


def document_lengths(segment_ids: torch.Tensor) -> torch.Tensor:
    """Lengths of the runs of equal ids over the flattened (B*T) batch (padding runs included):
    the cu_seqlens of flash-attn varlen, where every run is one causal document."""
    flat = segment_ids.reshape(-1)
    row_start = torch.zeros_like(flat, dtype=torch.bool)
    row_start[:: segment_ids.shape[1]] = True
    starts = row_start.clone()
    starts[1:] |= flat[1:] != flat[:-1]
    bounds = torch.nonzero(starts).flatten()
    return torch.diff(bounds, append=torch.tensor([flat.numel()], device=flat.device))

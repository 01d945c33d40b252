"""Attention masks derived from ids, as small composable rules (never stored dense in a batch).

A query q may attend to a key k when both are in the same document and either k comes no later
than q (causal), or - in bidirectional mode (transfusion) - both belong to the same image span.
Padding has document id 0 and attends only to itself: no row of a mask is ever empty, and a long
run of padding does not become one long causal document that flex/sdpa would spend time on.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class DocumentSlots:
    """A packed batch's documents cut out into `n` rows of `length` slots each, so attention
    costs the sum of n * length^2 instead of B * T^2 (varlen attention on devices without a
    varlen kernel). Padding tokens (document 0) attend only to themselves: their output is
    their own value, and they take no slot."""

    gather: torch.Tensor  # (n * length,) flat token index of each slot (slot padding: the document's first token)
    scatter: torch.Tensor  # (B * T,) flat slot index of each token (padding tokens: 0, overwritten)
    padding: torch.Tensor  # (B * T,) bool, document 0
    mask: torch.Tensor  # (n, 1, length, length) bool, the rule on the slots (slot padding attends to itself)
    n: int
    length: int


# Documents are cut out only where that at least halves the attention work: a row that is one
# document (or nearly) gains nothing and would pay the two copies.
SLOT_WORK_RATIO = 0.5


def document_slots(segment_ids: torch.Tensor, span_ids: torch.Tensor, bidirectional: bool) -> DocumentSlots | None:
    """(B, T) ids -> the documents as slots, or None when that would not halve the attention work."""
    b, t = segment_ids.shape
    flat_seg = segment_ids.reshape(-1)
    lengths = document_lengths(segment_ids)
    starts = torch.cumsum(lengths, 0) - lengths
    real = flat_seg[starts] > 0
    lengths, starts = lengths[real], starts[real]
    if not len(lengths):
        return None
    n, length = len(lengths), int(lengths.max())
    if n * length * length > SLOT_WORK_RATIO * b * t * t:
        return None
    offset = torch.arange(length, device=segment_ids.device)
    valid = offset[None] < lengths[:, None]  # (n, L)
    gather = torch.where(valid, starts[:, None] + offset[None], starts[:, None])
    scatter = torch.zeros(b * t, dtype=torch.long, device=segment_ids.device)
    scatter[gather[valid]] = torch.arange(n * length, device=segment_ids.device).view(n, length)[valid]
    span = torch.where(valid, span_ids.reshape(-1)[gather], 0)
    seg = valid.long()
    mask = allowed(seg[:, :, None], seg[:, None, :], span[:, :, None], span[:, None, :],
                   offset[:, None], offset[None, :], bidirectional)[:, None]
    return DocumentSlots(gather.reshape(-1), scatter, flat_seg == 0, mask, n, length)

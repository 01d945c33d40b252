"""Rotary positions over three axes (t, h, w): multimodal RoPE, interleaved frequencies.

Frequency j of the head_dim/2 rotary pairs turns with axis j % 3 (time, row, column), so every
axis gets fast and slow frequencies. Text tokens carry the same position on all three axes, for
which this reduces exactly to ordinary 1-D RoPE; image patches add their row/column (and frame)
offsets, so one mixed sequence has consistent relative positions (Qwen2-VL's M-RoPE).

Pairs are adjacent channels (2j, 2j+1) rotated as one complex multiply (Llama's layout): one
kernel instead of the slices, products and concatenation of the rotate-half form.
"""

from __future__ import annotations

import torch


def rotary_phases(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """(B, T, 3) long positions -> (B, T, head_dim/2) fp32 angles, pair j turning with axis j % 3."""
    half = head_dim // 2
    inv_freq = theta ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    axis = torch.arange(half, device=positions.device) % 3
    return positions[..., axis].float() * inv_freq


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """(B, T, 3) long positions -> complex64 rotations of shape (B, 1, T, head_dim/2)."""
    angles = rotary_phases(positions, head_dim, theta)
    return torch.polar(torch.ones_like(angles), angles).unsqueeze(1)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, head_dim) by `rotation` (B, 1, T, head_dim/2); keeps x's dtype."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * rotation).flatten(-2).to(x.dtype)

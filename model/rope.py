"""Rotary positions over three axes (t, h, w): multimodal RoPE, interleaved frequencies.

Frequency j of the head_dim/2 rotary pairs turns with axis j % 3 (time, row, column), so every
axis gets fast and slow frequencies. Text tokens carry the same position on all three axes, for
which this reduces exactly to ordinary 1-D RoPE; image patches add their row/column (and frame)
offsets, so one mixed sequence has consistent relative positions (Qwen2-VL's M-RoPE).
"""

from __future__ import annotations

import torch


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 3) long positions -> cos, sin of shape (B, 1, T, head_dim/2), float32."""
    half = head_dim // 2
    inv_freq = theta ** (-torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    axis = torch.arange(half, device=positions.device) % 3
    angles = positions[..., axis].float() * inv_freq  # (B, T, half)
    return angles.cos().unsqueeze(1), angles.sin().unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, head_dim) by the angles (rotate-half layout); keeps x's dtype."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

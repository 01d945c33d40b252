"""Finite scalar quantisation, FSQ (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE
Made Simple").

Each of the d = len(levels) latent channels is squashed into a bounded range and rounded to one
of levels[i] integer values (straight-through gradient). The implicit codebook is the grid of all
combinations, prod(levels) codes, so there is no codebook to learn, no auxiliary loss, and no
dead codes. A code's index is its mixed-radix number with digit i in base levels[i].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class FSQ(nn.Module):
    """Quantise (B, d, h, w) to the grid defined by `levels`; values end up in [-1, 1]."""

    def __init__(self, levels: Sequence[int], eps: float = 1e-3) -> None:
        super().__init__()
        if len(levels) == 0 or any(int(l) < 2 for l in levels):
            raise ValueError(f"FSQ levels must be a non-empty list of ints >= 2, got {list(levels)}")
        self.levels_list = [int(l) for l in levels]
        self.eps = eps
        levels_t = torch.tensor(self.levels_list, dtype=torch.int64)
        # basis[i] = prod(levels[:i]): digit i's weight in the mixed-radix index.
        basis = torch.cumprod(torch.tensor([1] + self.levels_list[:-1], dtype=torch.int64), dim=0)
        # Derived from the config, so not saved with the weights (non-persistent).
        self.register_buffer("_levels", levels_t, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    @property
    def dim(self) -> int:
        return len(self.levels_list)

    @property
    def vocab_size(self) -> int:
        return math.prod(self.levels_list)

    def _per_channel(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        # (d,) -> broadcastable against a (B, d, h, w)-like tensor of `ndim` dims.
        return t.view(1, -1, *([1] * (ndim - 2)))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash channel i into (-levels[i]/2, levels[i]/2) so rounding yields levels[i] values.

        For even levels the range is shifted by half a step (tanh offset) so the grid is
        {-L/2, ..., L/2 - 1}; odd levels give the symmetric {-(L-1)/2, ..., (L-1)/2}.
        """
        levels = self._per_channel(self._levels, z.dim()).to(z.dtype)
        half_l = (levels - 1) * (1 + self.eps) / 2
        offset = torch.where(self._per_channel(self._levels, z.dim()) % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def _half_width(self, ndim: int, dtype: torch.dtype) -> torch.Tensor:
        return self._per_channel(self._levels // 2, ndim).to(dtype)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, d, h, w) -> (quantised values in [-1, 1] (B, d, h, w) with STE, codes (B, h, w) int64)."""
        if z.shape[1] != self.dim:
            raise ValueError(f"FSQ with levels {self.levels_list} expects {self.dim} channels, got {z.shape[1]}")
        bounded = self.bound(z)
        rounded = bounded + (torch.round(bounded) - bounded).detach()  # straight-through rounding
        z_q = rounded / self._half_width(z.dim(), z.dtype)  # normalise to [-1, 1]
        return z_q, self.codes_to_indices(z_q)

    def codes_to_indices(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised values (B, d, ...) in [-1, 1] -> mixed-radix indices (B, ...) int64."""
        half = self._half_width(z_q.dim(), z_q.dtype)
        digits = torch.round(z_q * half + half).long()  # (B, d, ...) in [0, levels[i] - 1]
        return (digits * self._per_channel(self._basis, z_q.dim())).sum(dim=1)

    def nearest_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Any values (B, d, ...) in code space (e.g. averages of codes) -> indices of the nearest
        grid point (B, ...)."""
        half = self._half_width(z.dim(), z.dtype)
        top = self._per_channel(self._levels, z.dim()) - 1
        digits = torch.minimum(torch.round(z * half + half).clamp(min=0), top).long()
        return (digits * self._per_channel(self._basis, z.dim())).sum(dim=1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B, ...) int -> quantised values (B, d, ...) in [-1, 1] (float32)."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.vocab_size):
            raise ValueError(f"FSQ indices must lie in [0, {self.vocab_size}), got [{int(indices.min())}, {int(indices.max())}]")
        idx = indices.long().unsqueeze(1)  # (B, 1, ...)
        ndim = idx.dim()
        digits = (idx // self._per_channel(self._basis, ndim)) % self._per_channel(self._levels, ndim)  # (B, d, ...)
        half = self._half_width(ndim, torch.float32)
        return (digits.float() - half) / half

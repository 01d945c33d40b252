"""Modality adapters: latent patches in and out of the transformer width, diffusion-time and
position-query embeddings.

Axis letters: N latent tokens in the batch, D = C*p*p values per patch, S spans (images or
videos), F frames, A adapter channels, W width.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from model.config import ModelConfig


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(...,) float -> (..., dim) sin/cos features (the DDPM timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = x.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimeEmbedding(nn.Module):
    """Diffusion time t in [0, 1] -> (.., out_dim) through sinusoidal features and an MLP."""

    def __init__(self, out_dim: int, features: int = 256):
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(t * 1000.0, self.features).to(self.mlp[0].weight.dtype))


class GridEmbedding(nn.Module):
    """(t, h, w) offsets inside an image -> (.., W): sin/cos features per axis, one linear layer.
    Two uses: the absolute position of each patch (`patch_positions`), and in mar random order
    the position of the token to predict next (RandAR-style target query)."""

    def __init__(self, width: int, features: int = 64):
        super().__init__()
        self.features = features
        self.proj = nn.Linear(3 * features, width)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:  # (..., 3) -> (..., W)
        feats = sinusoidal(positions.float(), self.features, max_period=100.0).flatten(-2)
        return self.proj(feats.to(self.proj.weight.dtype))


class MaskEmbedding(nn.Module):
    """Masked mar's learned [MASK] input: replaces the latent input of every masked token (its
    place in the image still comes from the rotary positions, and patch_positions if set)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, h: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:  # (B, T, W), (B, T) bool
        return torch.where(masked.unsqueeze(-1), self.weight.to(h.dtype), h)


def _grid_groups(span_grid: torch.Tensor):
    """Yield (token slice start, end, grid) per span, in batch order; no spans yield one empty
    group (a zero-row call still runs the convs: see MultimodalModel's `idle`)."""
    if not len(span_grid):
        yield 0, 0, (0, 1, 1)
        return
    start = 0
    for t, h, w in span_grid.tolist():
        end = start + t * h * w
        yield start, end, (t, h, w)
        start = end


class LatentInput(nn.Module):
    """(N, D) patch vectors -> (N, W). Linear, or Transfusion's U-Net variant: a conv block on the
    un-patchified latent, then a p x p strided conv that makes the patch tokens."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.conv_adapter:
            a, c, p = cfg.adapter_channels, cfg.latent_channels, cfg.patch_size
            self.conv = nn.Sequential(nn.Conv2d(c, a, 3, padding=1), nn.GroupNorm(8, a), nn.SiLU(),
                                      nn.Conv2d(a, a, p, stride=p))
            self.proj = nn.Linear(a, cfg.width)
        else:
            self.conv = None
            self.proj = nn.Linear(cfg.patch_dim, cfg.width)

    def forward(self, vectors: torch.Tensor, span_grid: torch.Tensor) -> torch.Tensor:
        vectors = vectors.to(self.proj.weight.dtype)  # latents are fp32 data; compute in the weights' dtype
        if self.conv is None:
            return self.proj(vectors)
        p, out = self.cfg.patch_size, []
        for start, end, (t, h, w) in _grid_groups(span_grid):
            frames = rearrange(vectors[start:end], "(f h w) (c p1 p2) -> f c (h p1) (w p2)", f=t, h=h, w=w, p1=p, p2=p)
            out.append(rearrange(self.conv(frames), "f a h w -> (f h w) a"))
        return self.proj(torch.cat(out))


class LatentOutput(nn.Module):
    """(N, W) hidden states -> (N, D) predictions (velocity). Linear, or linear to A*p*p then a conv
    block on the un-patchified grid (the U-Net variant's up path)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.conv_adapter:
            a, c, p = cfg.adapter_channels, cfg.latent_channels, cfg.patch_size
            self.proj = nn.Linear(cfg.width, a * p * p)
            self.conv = nn.Sequential(nn.GroupNorm(8, a), nn.SiLU(), nn.Conv2d(a, c, 3, padding=1))
        else:
            self.proj = nn.Linear(cfg.width, cfg.patch_dim)
            self.conv = None

    def forward(self, hidden: torch.Tensor, span_grid: torch.Tensor) -> torch.Tensor:
        x = self.proj(hidden)
        if self.conv is None:
            return x
        p, out = self.cfg.patch_size, []
        for start, end, (t, h, w) in _grid_groups(span_grid):
            frames = rearrange(x[start:end], "(f h w) (a p1 p2) -> f a (h p1) (w p2)", f=t, h=h, w=w, p1=p, p2=p)
            out.append(rearrange(self.conv(frames), "f c (h p1) (w p2) -> (f h w) (c p1 p2)", p1=p, p2=p))
        return torch.cat(out)

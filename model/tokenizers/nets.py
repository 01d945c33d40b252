"""Encoder / Decoder conv nets shared by the KL, VQ and FSQ tokenizers.

A small LDM-style design (Rombach et al. 2022) without attention: residual blocks with
GroupNorm + SiLU, stride-2 convs to downsample, nearest-neighbour upsampling + conv to upsample
(avoids the checkerboard artefacts of transposed convs). Sized to train on a CPU on 32x32 images.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(ch: int) -> nn.GroupNorm:
    # 8 groups: stable statistics even at batch 1, and channels are validated to be multiples of 8.
    return nn.GroupNorm(num_groups=8 if ch % 8 == 0 else 1, num_channels=ch, eps=1e-6)


def level_widths(channels: int, num_down: int) -> list[int]:
    """Width at each resolution level 0..num_down: base, then 2x base from the first downsampling on."""
    return [channels * min(2**i, 2) for i in range(num_down + 1)]


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a (1x1-projected when widths differ) skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.act = nn.SiLU()
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, out, H, W)
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv: learned downsampling, halves H and W."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, out, H/2, W/2)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 conv: doubles H and W without checkerboard artefacts."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, out, 2H, 2W)
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """Image (B, in_ch, H, W) -> feature map (B, out_ch, H / 2**num_down, W / 2**num_down)."""

    def __init__(
        self, in_ch: int, out_ch: int, channels: int, num_down: int, num_res_blocks: int = 1
    ) -> None:
        super().__init__()
        widths = level_widths(channels, num_down)
        self.conv_in = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i in range(num_down):
            blocks += [ResBlock(widths[i], widths[i]) for _ in range(num_res_blocks)]
            blocks.append(Downsample(widths[i], widths[i + 1]))
        # One more block at the latent resolution: the bottleneck gets some context before projecting.
        blocks += [ResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(x))  # (B, widths[-1], h, w)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))  # (B, out_ch, h, w)


class Decoder(nn.Module):
    """Latent (B, in_ch, h, w) -> image (B, out_ch, h * 2**num_down, w * 2**num_down), unbounded.

    The output is not squashed with tanh: MSE on [-1, 1] targets trains faster without it, and
    callers clamp when they need valid pixels.
    """

    def __init__(
        self, in_ch: int, out_ch: int, channels: int, num_down: int, num_res_blocks: int = 1
    ) -> None:
        super().__init__()
        widths = level_widths(channels, num_down)
        self.conv_in = nn.Conv2d(in_ch, widths[-1], 3, padding=1)
        blocks: list[nn.Module] = [ResBlock(widths[-1], widths[-1]) for _ in range(num_res_blocks)]
        for i in reversed(range(num_down)):
            blocks.append(Upsample(widths[i + 1], widths[i]))
            blocks += [ResBlock(widths[i], widths[i]) for _ in range(num_res_blocks)]
        self.blocks = nn.Sequential(*blocks)
        self.norm_out = _norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.conv_in(z))  # (B, widths[0], H, W)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))  # (B, out_ch, H, W)

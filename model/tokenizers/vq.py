"""Vector quantiser (van den Oord et al. 2017) with usage tracking and dead-code restarts.

Each encoder output vector is replaced by its nearest codebook entry; gradients pass straight
through to the encoder. The codebook learns from the codebook loss ||sg[z] - e||^2, the encoder
from the commitment loss ||z - sg[e]||^2. Codes that stop being picked ("dead" codes, the usual
failure of VQ training) are re-seeded from random encoder outputs of the current batch
(Dhariwal et al. 2020, Jukebox), so the whole vocabulary stays in use.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser over the channel dim of (B, D, h, w) feature maps."""

    def __init__(self, codebook_size: int, dim: int, usage_decay: float = 0.95) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.usage_decay = usage_decay
        self.codebook = nn.Embedding(codebook_size, dim)
        # Unit-scale init, like the encoder's outputs at init, so early on many codes are near data.
        nn.init.normal_(self.codebook.weight, std=1.0 / math.sqrt(dim))
        # EMA of how often each code is picked per training step, relative to uniform usage
        # (1.0 = used as often as the average code). Zero at init: never-used codes are dead at
        # the first restart. Persistent, so resumed training keeps its statistics.
        self.register_buffer("ema_usage", torch.zeros(codebook_size))
        # Latest training batch's encoder outputs (detached), the pool restarts draw from.
        self._last_inputs: torch.Tensor | None = None

    def nearest(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of (N, D) -> (N,) int64."""
        w = self.codebook.weight  # (K, D)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, without materialising (N, K, D).
        dist = z_flat.pow(2).sum(1, keepdim=True) - 2 * z_flat @ w.t() + w.pow(2).sum(1)[None]  # (N, K)
        return dist.argmin(dim=1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) int -> code vectors (B, D, h, w)."""
        return rearrange(self.codebook(codes), "b h w d -> b d h w")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Quantise z (B, D, h, w) -> (z_q straight-through (B, D, h, w), codes (B, h, w), losses).

        losses: "vq" codebook loss and "commit" commitment loss, both unweighted MSEs.
        """
        b, _, h, w = z.shape
        z_flat = rearrange(z, "b d h w -> (b h w) d")  # (N, D)
        codes_flat = self.nearest(z_flat.detach())  # (N,)
        z_q = self.lookup(codes_flat.view(b, h, w))  # (B, D, h, w)
        losses = {
            "vq": nn.functional.mse_loss(z_q, z.detach()),
            "commit": nn.functional.mse_loss(z, z_q.detach()),
        }
        if self.training:
            self._update_usage(codes_flat)
            self._last_inputs = z_flat.detach()
        z_q = z + (z_q - z).detach()  # straight-through estimator: forward z_q, backward identity
        return z_q, codes_flat.view(b, h, w), losses

    @torch.no_grad()
    def _update_usage(self, codes_flat: torch.Tensor) -> None:
        counts = torch.bincount(codes_flat, minlength=self.codebook_size).to(self.ema_usage.dtype)
        relative = counts * (self.codebook_size / max(codes_flat.numel(), 1))  # uniform usage -> 1.0
        self.ema_usage.mul_(self.usage_decay).add_(relative, alpha=1.0 - self.usage_decay)

    def dead_codes(self, threshold: float) -> torch.Tensor:
        """Indices (int64) of codes whose EMA usage is below `threshold`."""
        return torch.nonzero(self.ema_usage < threshold).flatten()

    @torch.no_grad()
    def restart_dead_codes(self, threshold: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Re-seed dead codes from random encoder outputs of the latest training batch.

        Returns the revived code indices (empty when none were dead or no batch was seen yet),
        so the caller can reset their optimiser state. Revived codes get usage 1.0, a grace
        period before they can be declared dead again.
        """
        dead = self.dead_codes(threshold)
        pool = self._last_inputs
        if dead.numel() == 0 or pool is None or pool.shape[0] == 0:
            return dead[:0]
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), generator=generator, device="cpu").to(pool.device)
        seeds = pool[pick]  # (n_dead, D)
        # A little noise so codes seeded from the same (or identical) vectors can separate.
        noise = torch.randn(seeds.shape, generator=generator, device="cpu").to(seeds) * 1e-3
        scale = seeds.std().clamp_min(1e-6)
        self.codebook.weight.data[dead] = seeds + noise * scale
        self.ema_usage[dead] = 1.0
        return dead


def codebook_utilisation(codes: torch.Tensor, vocab_size: int) -> float:
    """Fraction of the vocabulary that appears at least once in `codes` (any shape, int)."""
    return float(torch.unique(codes).numel()) / float(vocab_size)


def code_histogram(codes: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Counts per code, shape (vocab_size,) float64."""
    return torch.bincount(codes.flatten().long(), minlength=vocab_size).double()


def perplexity(codes: torch.Tensor, vocab_size: int) -> float:
    """exp(entropy) of the empirical code distribution: the 'effective vocabulary size' in use.

    Ranges from 1 (one code) to vocab_size (uniform usage).
    """
    counts = code_histogram(codes, vocab_size)
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float(entropy.exp())

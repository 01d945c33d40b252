"""Diagonal Gaussian posterior q(z|x) of a KL autoencoder (Kingma & Welling 2014; LDM's KL-VAE).

The encoder predicts mean and log-variance per latent value; training samples with the
reparameterisation trick and pays KL(q || N(0, I)), which keeps the latent near unit scale
so a diffusion model can use it directly.
"""

from __future__ import annotations

import torch

# Same clamp as LDM: exp(20 / 2) bounds the std from above, exp(-30 / 2) keeps log/exp finite.
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class DiagonalGaussian:
    """q(z|x) = N(mean, diag(exp(logvar))), built from the encoder's (B, 2C, h, w) moments."""

    def __init__(self, moments: torch.Tensor) -> None:
        if moments.dim() < 2 or moments.shape[1] % 2:
            raise ValueError(f"moments need an even channel dim (mean and logvar), got shape {tuple(moments.shape)}")
        mean, logvar = moments.chunk(2, dim=1)  # (B, C, h, w) each
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)

    @classmethod
    def from_mean_logvar(cls, mean: torch.Tensor, logvar: torch.Tensor) -> "DiagonalGaussian":
        return cls(torch.cat([mean, logvar], dim=1))

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample mean + std * eps, differentiable in mean and logvar."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps  # (B, C, h, w)

    def mode(self) -> torch.Tensor:
        """The posterior mean: the deterministic latent used for evaluation and data prep."""
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent value, shape (B, C, h, w): 0.5 * (mu^2 + var - 1 - logvar)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)

    def kl_loss(self) -> torch.Tensor:
        """Scalar KL averaged over every latent value (the unit `kl_weight` is calibrated in)."""
        return self.kl().mean()

"""ImageTokenizer: one autoencoder class for continuous (KL) and discrete (VQ, FSQ) image latents.

Images are (B, 3, H, W) floats in [-1, 1]. The encoder downsamples by `config.downsample`; the
bottleneck is a diagonal Gaussian (kl), a learned codebook (vq) or a fixed scalar grid (fsq).
Video is handled frame by frame with time kept as an extra latent axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from core.errors import DataError

from .config import TokenizerConfig
from .fsq import FSQ
from .kl import DiagonalGaussian
from .nets import Decoder, Encoder
from .vq import VectorQuantizer


@dataclass
class TokenizerOutput:
    """What `encode` returns; fields that do not apply to the tokenizer's kind are None.

    kl:     mean, logvar (B, C, h, w); latent = mean (the deterministic latent to decode).
    vq/fsq: codes (B, h, w) int64; latent (B, D, h, w) the quantised vectors.
    Video adds a time axis after B: (B, T, C, h, w) / (B, T, h, w).
    """

    latent: torch.Tensor
    mean: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    codes: torch.Tensor | None = None

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """kl only: a reparameterised sample from the posterior (same shape as mean)."""
        if self.mean is None or self.logvar is None:
            raise ValueError("sample() needs a KL tokenizer's output (mean and logvar); discrete latents are deterministic")
        return DiagonalGaussian.from_mean_logvar(self.mean, self.logvar).sample(generator)


class ImageTokenizer(nn.Module):
    """Image autoencoder built from a `TokenizerConfig`.

    Video: `encode_video` / `decode_video` run the image tokenizer on every frame, so
    `temporal_compression = 1`. A temporal-compressing video tokenizer (e.g. a causal 3D-conv
    autoencoder that maps T frames to T / k latent frames) plugs in by subclassing, overriding
    these two methods and setting `temporal_compression = k`; callers size sequences from it.
    """

    temporal_compression: int = 1

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config.validate()
        c = config
        if c.kind == "kl":
            enc_out = 2 * c.latent_channels  # mean and logvar
            dec_in = c.latent_channels
        elif c.kind == "vq":
            enc_out = dec_in = c.vq_dim
        else:
            enc_out = dec_in = len(c.fsq_levels)
        self.encoder = Encoder(3, enc_out, c.channels, c.num_downsamples, c.num_res_blocks)
        self.decoder = Decoder(dec_in, 3, c.channels, c.num_downsamples, c.num_res_blocks)
        self.quantizer: VectorQuantizer | FSQ | None = None
        if c.kind == "vq":
            self.quantizer = VectorQuantizer(c.vq_codebook_size, c.vq_dim, c.vq_usage_decay)
        elif c.kind == "fsq":
            self.quantizer = FSQ(c.fsq_levels)

    # ------------------------------------------------------------------ shapes and budgets
    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def latent_channels(self) -> int:
        """Channels of the continuous latent fed to `decode`: C (kl) or code dim D (vq/fsq)."""
        c = self.config
        return {"kl": c.latent_channels, "vq": c.vq_dim, "fsq": len(c.fsq_levels)}[c.kind]

    @property
    def vocab_size(self) -> int | None:
        """Number of discrete codes, or None for the continuous (kl) tokenizer."""
        if self.config.kind == "vq":
            return self.config.vq_codebook_size
        if self.config.kind == "fsq":
            return math.prod(self.config.fsq_levels)
        return None

    def latent_shape(self) -> tuple[int, ...]:
        """Per-image latent shape at `config.image_size`: (C, h, w) for kl, (h, w) for vq/fsq."""
        s = self.config.latent_size
        return (self.latent_channels, s, s) if self.kind == "kl" else (s, s)

    def info_budget(self) -> dict:
        """How much information one image's latent can carry, to compare discrete and continuous.

        Discrete: L tokens of log2(V) bits each. Continuous: C*h*w float32 values; 32 bits each
        is raw storage, an upper bound far above what the KL-regularised latent really carries.
        """
        if self.kind == "kl":
            values = math.prod(self.latent_shape())
            return {
                "kind": "kl",
                "latent_shape": self.latent_shape(),
                "values": values,
                "dtype": "float32",
                "bits_per_image": values * 32,
            }
        tokens = math.prod(self.latent_shape())
        vocab = int(self.vocab_size or 0)
        return {"kind": self.kind, "tokens": tokens, "vocab": vocab, "bits_per_image": tokens * math.log2(vocab)}

    # ------------------------------------------------------------------ images
    def _check_images(self, x: torch.Tensor) -> None:
        d = self.config.downsample
        if x.dim() != 4 or x.shape[1] != 3:
            raise DataError(
                f"tokenizer expects images shaped (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}; "
                "convert grayscale/RGBA to RGB and add a batch dim"
            )
        if x.shape[2] % d or x.shape[3] % d:
            raise DataError(
                f"image size {tuple(x.shape[2:])} is not divisible by tokenizer.downsample = {d}; "
                f"resize or crop images to a multiple of {d} (trained at {self.config.image_size})"
            )
        if not x.is_floating_point():
            raise DataError(f"images must be float in [-1, 1], got dtype {x.dtype}; use x.float() / 127.5 - 1")

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(self.quantizer, VectorQuantizer):
            return self.quantizer(z)
        assert isinstance(self.quantizer, FSQ)
        z_q, codes = self.quantizer(z)
        return z_q, codes, {}

    def encode(self, x: torch.Tensor) -> TokenizerOutput:
        """Images (B, 3, H, W) -> TokenizerOutput (see its docstring for the fields per kind)."""
        self._check_images(x)
        h = self.encoder(x)  # (B, enc_out, h, w)
        if self.kind == "kl":
            post = DiagonalGaussian(h)
            return TokenizerOutput(latent=post.mean, mean=post.mean, logvar=post.logvar)
        z_q, codes, _ = self._quantize(h)
        return TokenizerOutput(latent=z_q, codes=codes)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Continuous latents (B, C, h, w) -> images (B, 3, H, W), roughly in [-1, 1] (unclamped).

        kl: a posterior sample or the mean (or a diffusion model's output); vq/fsq: the
        quantised vectors (`TokenizerOutput.latent`).
        """
        if z.dim() != 4 or z.shape[1] != self.latent_channels:
            raise DataError(
                f"decode expects latents shaped (B, {self.latent_channels}, h, w), got {tuple(z.shape)}; "
                "for token ids use decode_codes"
            )
        return self.decoder(z)

    def codes_to_latent(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) -> quantised vectors (B, D, h, w) (vq/fsq only)."""
        if self.quantizer is None:
            raise DataError("this is a continuous (kl) tokenizer: it has no codes; use decode(latent)")
        if codes.dim() != 3 or codes.is_floating_point():
            raise DataError(f"codes must be integer ids shaped (B, h, w), got {tuple(codes.shape)} {codes.dtype}")
        vocab = int(self.vocab_size or 0)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= vocab):
            raise DataError(
                f"codes must lie in [0, {vocab}) for this tokenizer, got [{int(codes.min())}, {int(codes.max())}]; "
                "were they produced by a different tokenizer (compare fingerprints)?"
            )
        if isinstance(self.quantizer, VectorQuantizer):
            return self.quantizer.lookup(codes.long())
        return self.quantizer.indices_to_codes(codes).to(self.decoder.conv_in.weight.dtype)

    def latent_to_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Vectors in code space (B, D, h, w), e.g. downsampled code vectors -> the ids (B, h, w) of
        the nearest codes (vq/fsq only; next-scale prediction's coarse scales, model/scales.py)."""
        if self.quantizer is None:
            raise DataError("this is a continuous (kl) tokenizer: it has no codes")
        if isinstance(self.quantizer, VectorQuantizer):
            b, _, h, w = z.shape
            return self.quantizer.nearest(rearrange(z.float(), "b d h w -> (b h w) d")).view(b, h, w)
        return self.quantizer.nearest_indices(z.float())

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h, w) -> images (B, 3, H, W) (vq/fsq only)."""
        return self.decoder(self.codes_to_latent(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: images -> (reconstruction, losses).

        losses: "recon" (MSE per pixel value), then "kl" (kl), "vq" and "commit" (vq,
        unweighted), and "total" = recon + kl_weight*kl | recon + vq + vq_beta*commit | recon.
        The KL tokenizer decodes a posterior sample in training mode and the mean in eval mode.
        """
        self._check_images(x)
        h = self.encoder(x)
        losses: dict[str, torch.Tensor] = {}
        if self.kind == "kl":
            post = DiagonalGaussian(h)
            z = post.sample() if self.training else post.mode()
            recon = self.decoder(z)
            losses["recon"] = nn.functional.mse_loss(recon, x)
            losses["kl"] = post.kl_loss()
            losses["total"] = losses["recon"] + self.config.kl_weight * losses["kl"]
            return recon, losses
        z_q, _, q_losses = self._quantize(h)
        recon = self.decoder(z_q)
        losses["recon"] = nn.functional.mse_loss(recon, x)
        losses.update(q_losses)
        total = losses["recon"]
        if self.kind == "vq":
            total = total + losses["vq"] + self.config.vq_beta * losses["commit"]
        losses["total"] = total
        return recon, losses

    def restart_dead_codes(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """VQ: revive dead codes from the latest training batch; returns their indices (else empty)."""
        if isinstance(self.quantizer, VectorQuantizer):
            return self.quantizer.restart_dead_codes(self.config.vq_dead_threshold, generator)
        return torch.empty(0, dtype=torch.int64)

    # ------------------------------------------------------------------ video
    def encode_video(self, frames: torch.Tensor) -> TokenizerOutput:
        """Frames (B, T, 3, H, W) -> per-frame latents with time kept: (B, T, C, h, w) / codes (B, T, h, w)."""
        if frames.dim() != 5:
            raise DataError(f"encode_video expects frames shaped (B, T, 3, H, W), got {tuple(frames.shape)}")
        b = frames.shape[0]
        out = self.encode(rearrange(frames, "b t c h w -> (b t) c h w"))

        def unfold(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else rearrange(t, "(b t) ... -> b t ...", b=b)

        return TokenizerOutput(
            latent=unfold(out.latent), mean=unfold(out.mean), logvar=unfold(out.logvar), codes=unfold(out.codes)
        )

    def decode_video(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of encode_video: latents (B, T, C, h, w) float, or codes (B, T, h, w) int
        (vq/fsq) -> frames (B, T, 3, H, W)."""
        b = z.shape[0]
        if z.is_floating_point():
            if z.dim() != 5:
                raise DataError(f"decode_video expects latents (B, T, C, h, w), got {tuple(z.shape)}")
            x = self.decode(rearrange(z, "b t c h w -> (b t) c h w"))
        else:
            if z.dim() != 4:
                raise DataError(f"decode_video expects codes (B, T, h, w), got {tuple(z.shape)}")
            x = self.decode_codes(rearrange(z, "b t h w -> (b t) h w"))
        return rearrange(x, "(b t) c h w -> b t c h w", b=b)

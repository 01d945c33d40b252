"""Use a pretrained diffusers `AutoencoderKL` (e.g. a Stable Diffusion VAE) through the
ImageTokenizer encode/decode interface.

Only local directories are read (`local_files_only=True`): nodd never downloads weights.
diffusers is an optional dependency, imported lazily. Latent scaling (SD's 0.18215 /
`vae.config.scaling_factor`) is left to the caller, as for ImageTokenizer latents.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from core.errors import ConfigError, DataError

from .autoencoder import TokenizerOutput


class DiffusersVAEConfig:
    """What prep records about a diffusers VAE: kind "kl" plus the VAE's own config."""

    kind = "kl"

    def __init__(self, vae_config: dict) -> None:
        self.vae_config = vae_config

    def to_dict(self) -> dict:
        return {"kind": "kl", "source": "diffusers", **{k: v for k, v in self.vae_config.items() if not k.startswith("_")},
                "class_name": self.vae_config.get("_class_name")}


class DiffusersVAE:
    """Adapter: diffusers AutoencoderKL -> encode(x) / decode(z) / encode_video / decode_video.

    encode: images (B, 3, H, W) in [-1, 1] -> TokenizerOutput(mean, logvar, latent=mean), all
    (B, C, H/f, W/f) with f = 2**(len(block_out_channels) - 1).
    """

    kind = "kl"
    vocab_size = None
    temporal_compression = 1

    def __init__(self, vae: Any, image_size: int = 256) -> None:
        self.vae = vae.eval()
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(getattr(cfg, "scaling_factor", 1.0))
        # The images it will see (a conv VAE takes any size; shapes are reported for this one).
        self.image_size = image_size
        self.config = DiffusersVAEConfig(dict(cfg))

    def to(self, device: str | torch.device) -> "DiffusersVAE":
        self.vae.to(device)
        return self

    def eval(self) -> "DiffusersVAE":
        self.vae.eval()
        return self

    def latent_shape(self, image_size: int | None = None) -> tuple[int, int, int]:
        """(C, h, w) of the latent of an image_size x image_size image."""
        s = (image_size or self.image_size) // self.downsample
        return (self.latent_channels, s, s)

    def info_budget(self, image_size: int | None = None) -> dict:
        values = math.prod(self.latent_shape(image_size))
        return {"kind": "kl", "latent_shape": self.latent_shape(image_size), "values": values,
                "dtype": "float32", "bits_per_image": values * 32}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> TokenizerOutput:
        dist = self.vae.encode(x).latent_dist
        return TokenizerOutput(latent=dist.mean, mean=dist.mean, logvar=dist.logvar)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample  # (B, 3, H, W)

    def encode_video(self, frames: torch.Tensor) -> TokenizerOutput:
        """Frames (B, T, 3, H, W) -> per-frame latents (B, T, C, h, w)."""
        b = frames.shape[0]
        out = self.encode(rearrange(frames, "b t c h w -> (b t) c h w"))
        fold = lambda t: rearrange(t, "(b t) ... -> b t ...", b=b)  # noqa: E731
        return TokenizerOutput(latent=fold(out.latent), mean=fold(out.mean), logvar=fold(out.logvar))

    def decode_video(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, T, C, h, w) -> frames (B, T, 3, H, W)."""
        b = z.shape[0]
        x = self.decode(rearrange(z, "b t c h w -> (b t) c h w"))
        return rearrange(x, "(b t) c h w -> b t c h w", b=b)


def load_diffusers_vae(local_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
                       image_size: int = 256) -> DiffusersVAE:
    """Load `AutoencoderKL.from_pretrained(local_dir, local_files_only=True)` wrapped as a DiffusersVAE."""
    try:
        from diffusers import AutoencoderKL  # lazy: optional dependency
    except ImportError as e:
        raise ConfigError(
            "loading a diffusers VAE needs the optional diffusers package: pip install 'nodd[diffusers]' "
            f"(import failed: {e})"
        ) from e
    p = Path(local_dir)
    if not (p / "config.json").is_file():
        raise DataError(
            f"no diffusers VAE at {p}: expected a local directory with config.json and "
            "diffusion_pytorch_model.safetensors (e.g. the 'vae' folder of a Stable Diffusion "
            "checkout); nodd never downloads, so copy the weights there first"
        )
    try:
        vae = AutoencoderKL.from_pretrained(str(p), local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load the diffusers VAE at {p}: {e}") from e
    return DiffusersVAE(vae, image_size)

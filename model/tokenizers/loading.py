"""One entry point for "the image tokenizer in this folder", whichever kind it is: a nodd
tokenizer (written by `nodd tokenizer train`) or a diffusers `AutoencoderKL` folder
(`config.json` + weights, e.g. the `vae` folder of a Stable Diffusion checkout)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from core.errors import ConfigError

from .diffusers_vae import DiffusersVAE, load_diffusers_vae
from .io import load_tokenizer, tokenizer_fingerprint

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def is_diffusers_vae(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("_class_name") == "AutoencoderKL"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def load_image_tokenizer(path: str | os.PathLike, image_size: int | None = None):
    """The tokenizer at `path`, in eval mode. With `image_size`, a nodd tokenizer must have been
    trained at that size (its latent grid depends on it)."""
    if is_diffusers_vae(path):
        return load_diffusers_vae(path, image_size=image_size or 256)
    tokenizer = load_tokenizer(path)
    if image_size and tokenizer.config.image_size != image_size:
        raise ConfigError(
            f"tokenizer at {path} was trained on {tokenizer.config.image_size}px images but image.size={image_size}; "
            f"set image.size={tokenizer.config.image_size} or train a tokenizer at {image_size}px"
        )
    return tokenizer


def image_tokenizer_fingerprint(path: str | os.PathLike) -> str:
    """sha256 identifying the tokenizer's config and weights (nodd's own, or over a diffusers
    folder's config.json and weight files)."""
    if not is_diffusers_vae(path):
        return tokenizer_fingerprint(path)
    digest = hashlib.sha256()
    for name in ("config.json", *DIFFUSERS_WEIGHTS):
        file = Path(path) / name
        if file.is_file():
            digest.update(name.encode())
            with open(file, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


__all__ = ["DiffusersVAE", "is_diffusers_vae", "load_image_tokenizer", "image_tokenizer_fingerprint"]

"""The Python API: what `nodd sample`, `nodd caption` and the tokenizers do, from a script.

    from pipeline.api import load
    model = load("runs/demo/train/export")           # an export folder, a run directory or a checkpoint
    images = model.generate("a red circle left of a blue square", n=4, steps=20, cfg_scale=3.0, seed=0)
    model.caption(images)                            # ['a red circle left of a blue square', ...]
    tokens = model.encode(images)                    # the image tokenizer: latents or codes, as trained on
    again = model.decode(tokens)                     # (n, H, W, 3) uint8
    ids = model.text.encode("a red circle"); model.text.decode(ids)

Images are (n, H, W, 3) uint8 arrays at the image tokenizer's resolution (`model.image_size`).
An export made by `nodd export` holds its tokenizers, so the folder alone is enough; loading it
reads safetensors and JSON only (no pickled code runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.inference import LoadedRun, caption_images, decode_tokens, encode_images, load_run, sample_images


class Model:
    def __init__(self, run: LoadedRun):
        self.run = run
        self.text = run.text  # .encode(str) -> ids, .decode(ids) -> str, bos_id, eos_id

    @property
    def mode(self) -> str:
        return self.run.model.cfg.mode

    @property
    def image_size(self) -> int:
        return self.run.image_size

    def generate(self, prompt: str, n: int = 1, steps: int = 20, cfg_scale: float | None = 3.0, seed: int = 0,
                 temperature: float = 1.0) -> np.ndarray:
        """(n, H, W, 3) uint8 images for `prompt` (seeded: the same call gives the same pixels)."""
        return sample_images(self.run, prompt, n, steps, cfg_scale, seed, temperature)

    def caption(self, images: np.ndarray, max_tokens: int = 48) -> list[str]:
        return caption_images(self.run, _checked(images, self.image_size), max_tokens)

    def encode(self, images: np.ndarray) -> torch.Tensor:
        """(n, C, h, w) latents (normalised as the model saw them) or (n, h, w) codes."""
        return encode_images(self.run, _checked(images, self.image_size))

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """What `encode` gives (or the model generates) -> (n, H, W, 3) uint8."""
        return decode_tokens(self.run, tokens)


def load(path: str | Path) -> Model:
    """An export folder, a run directory (its newest finished checkpoint) or a checkpoint."""
    return Model(load_run(path))


def _checked(images: np.ndarray, size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        from core.errors import DataError

        raise DataError(f"images must be (n, {size}, {size}, 3) uint8 arrays (the image tokenizer's resolution), "
                        f"got {images.shape} {images.dtype}; resize them first")
    return images

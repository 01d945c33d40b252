"""Use a trained run: load it, export consolidated weights, generate images, caption images.

    nodd export RUN [--out DIR]                      model.safetensors + model.json
    nodd sample --run RUN --prompt "a red circle" [--n 4] [--steps 20] [--cfg 3] [--seed 0]
    nodd caption --run RUN IMAGE [IMAGE ...]

RUN is a run directory (its newest checkpoint) or an export folder. Latents are normalised per
channel in training (pipeline/data/samples.py); the statistics travel with the export so samples
are de-normalised before the image tokenizer decodes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from core.errors import DataError
from model.config import ModelConfig
from model.multimodal import MultimodalModel
from pipeline.data.samples import LatentNorm

EXPORT_WEIGHTS, EXPORT_META = "model.safetensors", "model.json"


class LoadedRun:
    """A model ready for sampling plus what it needs around it (tokenizers, latent statistics)."""

    def __init__(self, model: MultimodalModel, meta: dict):
        from model.tokenizers import load_text_tokenizer

        self.model, self.meta = model.eval(), meta
        self.text = load_text_tokenizer(meta["text_tokenizer"])
        self.norm = LatentNorm.from_dict(meta["latent_norm"]) if meta.get("latent_norm") else None
        self._image_tokenizer = None

    @property
    def image_tokenizer(self):
        if self._image_tokenizer is None:
            from model.tokenizers import load_image_tokenizer

            if not self.meta.get("image_tokenizer"):
                raise DataError("this run's shards record no image tokenizer; cannot decode images")
            self._image_tokenizer = load_image_tokenizer(self.meta["image_tokenizer"]).eval()
        return self._image_tokenizer

    @property
    def image_size(self) -> int:
        """Pixels per side the image tokenizer works at (nodd tokenizers and diffusers VAEs)."""
        tok = self.image_tokenizer
        return getattr(tok, "image_size", None) or tok.config.image_size

    def normalise(self, latent: torch.Tensor) -> torch.Tensor:
        return self.norm.normalise(latent) if self.norm is not None else latent

    def denormalise(self, latent: torch.Tensor) -> torch.Tensor:
        return self.norm.denormalise(latent) if self.norm is not None else latent


def _run_meta(cfg) -> dict:
    """Tokenizers and latent statistics of a run's shards."""
    from data_prep import schema

    manifests = [schema.Manifest.read(d) for d in cfg.data.shard_dirs]
    norm = LatentNorm.from_manifests(manifests) if cfg.data.normalise_latents else None
    return {"model": asdict(cfg.model), "text_tokenizer": cfg.data.text_tokenizer,
            "image_tokenizer": cfg.data.tokenizer or manifests[0].tokenizer.get("path", ""),
            "latent_norm": norm.to_dict() if norm else None}


def load_run(path: str | Path) -> LoadedRun:
    path = Path(path)
    if (path / EXPORT_META).is_file():
        from safetensors.torch import load_file

        meta = json.loads((path / EXPORT_META).read_text(encoding="utf-8"))
        model = MultimodalModel(ModelConfig(**meta["model"]))
        model.load_state_dict(load_file(path / EXPORT_WEIGHTS))
        return LoadedRun(model, meta)
    config = path / "train_config.toml"
    if not config.is_file():
        raise DataError(f"{path} is neither a run directory (train_config.toml) nor an export ({EXPORT_META})")
    from core.config import load_config
    from pipeline.train.checkpoint import Checkpointer, load_weights
    from pipeline.train.config import TrainConfig

    cfg = load_config(TrainConfig, config)
    finished = Checkpointer(path, 1, 0).finished()
    if not finished:
        raise DataError(f"{path} has no finished checkpoint yet; train longer or wait for the next save")
    model = MultimodalModel(cfg.model)
    load_weights(model, finished[-1])
    return LoadedRun(model, _run_meta(cfg) | {"checkpoint": str(finished[-1])})


def export(run: str | Path, out: str | Path) -> Path:
    from safetensors.torch import save_file

    loaded = load_run(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    if loaded.model.cfg.tie_embeddings:
        weights.pop("lm_head.weight", None)
    save_file(weights, out / EXPORT_WEIGHTS)
    (out / EXPORT_META).write_text(json.dumps(loaded.meta, indent=2), encoding="utf-8")
    return out


@torch.no_grad()
def sample_images(run: LoadedRun, prompt: str, n: int, steps: int, cfg_scale: float | None, seed: int,
                  temperature: float = 1.0) -> np.ndarray:
    """(n, H, W, 3) uint8 images (first frame of videos) for one prompt."""
    from model.sampling import generate_images

    ids = run.text.encode(prompt)
    out = generate_images(run.model, [ids] * n, run.text.bos_id, steps=steps, cfg_scale=cfg_scale, seed=seed,
                          temperature=temperature)
    tok = run.image_tokenizer
    if run.model.cfg.mode == "discrete":
        pixels = tok.decode_codes(out.long())
    else:
        pixels = tok.decode(run.denormalise(out.float()))
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def caption_images(run: LoadedRun, images: np.ndarray, max_tokens: int = 48) -> list[str]:
    """Captions for (B, H, W, 3) uint8 images at the tokenizer's resolution."""
    from model.sampling import caption

    tok = run.image_tokenizer
    x = torch.from_numpy(images).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    encoded = tok.encode(x)
    cond = encoded.codes if run.model.cfg.mode == "discrete" else run.normalise(encoded.mean)
    ids = caption(run.model, cond, run.text.bos_id, run.text.eos_id, max_new_tokens=max_tokens)
    return [run.text.decode(row) for row in ids]

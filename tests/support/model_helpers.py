"""Tiny model configs, models and documents shared by the model tests."""

from __future__ import annotations

import torch

from model.batch import Document, Packer
from model.config import ModelConfig
from model.multimodal import MultimodalModel

BOS, EOS, PAD = 257, 258, 256  # the byte tokenizer's specials


def tiny_config(mode: str = "transfusion", **overrides) -> ModelConfig:
    base = dict(mode=mode, width=48, depth=2, heads=4, kv_heads=2, latent_channels=4, latent_size=4,
                patch_size=1, head_width=32, head_depth=2, codebook_size=16 if mode == "discrete" else 0,
                attention="sdpa")
    base.update(overrides)
    cfg = ModelConfig(**base)
    cfg.validate()
    return cfg


def tiny_model(cfg: ModelConfig, seed: int = 0) -> MultimodalModel:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = MultimodalModel(cfg)
    model.to_empty(device="cpu")
    model.init_weights()
    return model


def documents(cfg: ModelConfig, seed: int = 0, video: bool = False) -> list[Document]:
    """A mixed set: plain text, two generations (one with an empty caption), one understanding."""
    g = torch.Generator().manual_seed(seed)

    def image():
        shape = (2, cfg.latent_size, cfg.latent_size) if video else (cfg.latent_size, cfg.latent_size)
        if cfg.mode == "discrete":
            return {"codes": torch.randint(0, cfg.codebook_size, shape, generator=g)}
        lat_shape = (2, cfg.latent_channels, cfg.latent_size, cfg.latent_size) if video else \
            (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        return {"latent": torch.randn(lat_shape, generator=g)}

    text = lambda s: list(s.encode())  # noqa: E731
    return [
        Document("text", text("hello world")),
        Document("generate", text("a red circle"), **image()),
        Document("understand", text("a blue square"), **image()),
        Document("generate", [], **image()),
    ]


def packer(cfg: ModelConfig) -> Packer:
    return Packer(cfg, BOS, EOS, PAD)

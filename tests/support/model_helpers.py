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
            codes = torch.randint(0, cfg.codebook_size, shape, generator=g)
            if cfg.next_scale_images:
                return {"codes": codes, "scale_codes": fsq_pyramid(codes, cfg)}
            return {"codes": codes}
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


def fsq_pyramid(codes: torch.Tensor, cfg: ModelConfig) -> list[torch.Tensor]:
    """Discrete next-scale codes of an (H, W) code map, through a real FSQ of 4 x 4 = 16 codes
    (the tiny discrete config's codebook), as the loader makes them with the image tokenizer."""
    from model.scales import code_pyramid
    from model.tokenizers.fsq import FSQ

    fsq = FSQ([4, 4])
    assert fsq.vocab_size == cfg.codebook_size
    return code_pyramid(codes, cfg.var_scales, fsq.indices_to_codes, fsq.nearest_indices)


def packer(cfg: ModelConfig) -> Packer:
    return Packer(cfg, BOS, EOS, PAD)


def overfit(cfg, steps=40, lr=3e-3, video=False):
    model = tiny_model(cfg)
    batch = packer(cfg).pack(documents(cfg, video=video), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        torch.manual_seed(0)  # the same noise and time draws every step: a fixed objective
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: float(v) for k, v in out.losses.items()} | {"loss": float(out.loss.detach())})
    return history, out

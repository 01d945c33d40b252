"""Small configs and a batch comparison shared by the loader tests."""

import torch

from core.config import load_config
from model.config import ModelConfig
from pipeline.data.config import DataConfig


def model_cfg(mode="transfusion"):
    return ModelConfig(mode=mode, width=32, depth=1, heads=4, latent_channels=4, latent_size=8,
                       codebook_size=1000 if mode == "discrete" else 0)


def data_cfg(folder, **overrides):
    args = [f"shards={folder}", "seq_len=512", "batch_rows=2", "shuffle_buffer=16"]
    args += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(DataConfig, None, args)


def same(a, b):
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("tokens", "segment_ids", "positions", "targets")) \
        and torch.equal(a.latents, b.latents) and torch.equal(a.times, b.times)

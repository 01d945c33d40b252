"""Suite-wide fixtures. Ray tests share one local Ray (starting one costs 3-8 s here); the suite
runs inside a loopback-only network namespace (`make test`), so Ray binds only 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def local_ray():
    import ray

    from data_prep.config import RayConfig
    from data_prep.ray_runtime import init_ray

    init_ray(RayConfig())
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tokenizers(tmp_path_factory) -> dict[str, Path]:
    """Untrained (randomly initialised) KL and FSQ tokenizers, saved like trained ones: prep
    only needs a deterministic encoder, not a good one."""
    import torch

    from model.tokenizers import ImageTokenizer, TokenizerConfig, save_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    paths = {}
    for kind in ("kl", "fsq", "vq"):
        torch.manual_seed(0)
        tok = ImageTokenizer(TokenizerConfig(kind=kind, image_size=32, downsample=4, channels=16))
        save_tokenizer(tok, root / kind)
        paths[kind] = root / kind
    return paths


@pytest.fixture(scope="session")
def shards(tmp_path_factory, tiny_tokenizers):
    """200 shapes images in 4 shards per tokenizer kind (one process, no Ray)."""
    from core.config import load_config
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep

    out = {}
    for kind in ("kl", "fsq"):
        folder = tmp_path_factory.mktemp(f"shards_{kind}")
        cfg = load_config(PrepConfig, None, [f"out_dir={folder}", f"tokenizer.path={tiny_tokenizers[kind]}",
                                             "source.limit=200", "shard_size=50", "use_ray=false"])
        run_prep(cfg)
        out[kind] = folder
    return out

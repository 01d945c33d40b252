"""Fixtures for pipeline tests: small prepared shard folders (one process, no Ray)."""

import pytest

from data_prep.config import PrepConfig
from data_prep.prep import run_prep
from pipeline.config import load_config


@pytest.fixture(scope="session")
def shards(tmp_path_factory, tiny_tokenizers):
    """200 shapes images in 4 shards per tokenizer kind (one process, no Ray)."""
    out = {}
    for kind in ("kl", "fsq"):
        folder = tmp_path_factory.mktemp(f"shards_{kind}")
        cfg = load_config(PrepConfig, None, [f"out_dir={folder}", f"tokenizer.path={tiny_tokenizers[kind]}",
                                             "source.limit=200", "shard_size=50", "use_ray=false"])
        run_prep(cfg)
        out[kind] = folder
    return out

"""Fixtures for data_prep tests: folders of good and deliberately bad media, tiny tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.media_files import write_bad_image_folder, write_image_folder


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "images"
    return root, write_image_folder(root)


@pytest.fixture
def bad_image_folder(tmp_path) -> Path:
    root = tmp_path / "bad_images"
    write_bad_image_folder(root)
    return root


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

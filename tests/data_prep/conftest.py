"""Fixtures for data_prep tests: folders of good and deliberately bad media (tiny tokenizers are
suite-wide, in tests/conftest.py)."""

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

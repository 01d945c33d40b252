"""Fixtures for cluster tests: a private job registry per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def nodd_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own job registry (NODD_HOME)."""
    home = tmp_path / "nodd_home"
    monkeypatch.setenv("NODD_HOME", str(home))
    return home

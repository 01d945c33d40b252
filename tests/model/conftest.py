"""Fixtures for the model tests (helpers live in tests/support/model_helpers.py)."""

import pytest


@pytest.fixture(params=["transfusion", "mar", "discrete"])
def mode(request) -> str:
    return request.param

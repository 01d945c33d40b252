"""Suite-wide fixtures. Ray tests share one local Ray (starting one costs 3-8 s here); the suite
runs inside a loopback-only network namespace (`make test`), so Ray binds only 127.0.0.1."""

from __future__ import annotations

import os

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

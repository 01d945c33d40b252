"""Starting or joining Ray for prep, and sizing the encoder actor pool.

On a 2-core machine an actor pool that takes every logical CPU starves the read/decode stage and
Ray Data hangs for good (ray issue 44687). A local Ray therefore gets
twice as many logical CPUs as cores: decode tasks (0.5 CPU) and encoder actors (1 CPU, one torch
thread) then overlap instead of deadlocking, and the OS shares the real cores.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from core.errors import ClusterError
from data_prep.config import RayConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> None:
    if cfg.address and (Path.home() / ".ray" / "auth_token").exists():
        # A head started with `ray start` on this machine requires token auth from its clients;
        # Ray reads the mode when it is first imported.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return
    ctx_kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True,
                      configure_logging=True)
    if cfg.address:
        _check_reachable(cfg.address)
        try:
            ray.init(address=cfg.address, **ctx_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(
                f"cannot connect to the Ray cluster at ray.address={cfg.address!r}: {exc}. "
                "Start one with `ray start --head` or leave ray.address empty for a local Ray"
            ) from None
    else:
        cores = os.cpu_count() or 1
        # address="local": always a private Ray, never a cluster that `ray start` left on this machine.
        ray.init(address="local", num_cpus=cfg.num_cpus or 2 * cores, **ctx_kwargs)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # nodd shows one bar over shards instead
    ctx.print_on_execution_start = False


def _check_reachable(address: str) -> None:
    """Fail in seconds, not minutes: ray.init retries an unreachable GCS for a long time."""
    if address == "auto":
        return
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not port.isdigit():
        raise ClusterError(f"ray.address={address!r} must look like host:port, ray://host:port or auto")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise ClusterError(
            f"no Ray cluster answers at ray.address={address!r} ({exc.strerror or exc}); start one with "
            "`ray start --head` or leave ray.address empty for a local Ray"
        ) from None


def encoder_resources(cfg: RayConfig, pending_units: int) -> tuple[int, float, float, int]:
    """(actors, CPUs per actor, GPUs per actor, torch threads per actor)."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        actors = cfg.encoders or max(1, int(gpus / cfg.gpus_per_encoder))
        return min(actors, pending_units), 1.0, cfg.gpus_per_encoder, 0
    if cfg.address:  # leave half of a cluster's CPUs to the decode and write tasks
        cores = max(1, int(resources.get("CPU", 1)) // 2)
    else:
        cores = os.cpu_count() or 1
    actors = cfg.encoders or cores
    return max(1, min(actors, pending_units)), 1.0, 0.0, 1

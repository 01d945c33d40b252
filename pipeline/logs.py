"""Logging set-up: rank 0 logs at INFO, other ranks only warnings (torchrun/srun set RANK)."""

from __future__ import annotations

import logging
import os
import sys


def rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    if rank() != 0:
        level = logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("ray", "filelock", "urllib3", "PIL", "datasets", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

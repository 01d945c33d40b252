"""Process-group set-up shared by every engine: backend by device, rank/world from the
environment torchrun or srun provides, and a clean exit that dodges gloo's shutdown crash.

Facts measured with torch 2.13: on CPU use gloo with MASTER_ADDR=127.0.0.1; a gloo process sometimes dies
at interpreter exit with "terminate called without an active exception" after correct results.
A barrier, flushed output and `os._exit` avoid it, so CI never goes red at random.
"""

from __future__ import annotations

import multiprocessing.util
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by the environment (single process when there is none)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if world > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, torch.device(device, local_rank) if device == "cuda" else torch.device(device))


def exit_process(code: int = 0, wait: bool = True) -> None:
    """End a distributed worker: wait for every rank (unless `wait=False`: they already met),
    flush, then leave without interpreter teardown (gloo's worker threads can abort the process
    during it)."""
    if dist.is_initialized():
        try:
            if wait:
                dist.barrier()
        finally:
            # what atexit would do for multiprocessing: stop helper processes started here (megatron's
            # checkpoint writer keeps a spawned Manager for its result queue), which would outlive
            # this process and hold its stdout open (a caller reading it to the end never returns)
            multiprocessing.util._exit_function()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    sys.exit(code)


def join_single_process_group(info: DistInfo) -> None:
    """megatron-core and DeepSpeed need torch.distributed even in one process: a one-rank group
    (a file store, no port)."""
    if dist.is_initialized():
        return
    if info.world > 1:
        raise RuntimeError("init_distributed should have joined the process group")
    import tempfile
    from pathlib import Path

    store = Path(tempfile.mkdtemp(prefix="nodd-group-")) / "store"
    dist.init_process_group("nccl" if info.device.type == "cuda" else "gloo", init_method=f"file://{store}",
                            rank=0, world_size=1)

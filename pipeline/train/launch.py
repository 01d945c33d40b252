"""`nodd train --nproc N`: start N local worker processes with torchrun, each running the same
`nodd train` command (without --nproc). Under torchrun or srun already, nothing is started."""

from __future__ import annotations

import os
import subprocess
import sys


def already_distributed() -> bool:
    under_torchrun = "LOCAL_RANK" in os.environ
    under_srun = "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1
    return under_torchrun or under_srun


def launch_local(nproc: int, argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--nproc=")]  # "--nproc=N"
    if "--nproc" in args:  # "--nproc N"
        i = args.index("--nproc")
        args = args[:i] + args[i + 2:]
    env = dict(os.environ, MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"), OMP_NUM_THREADS=os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc))))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pipeline.cli", *args]
    return subprocess.call(command, env=env)

"""`nodd train --nproc N`: start N local worker processes with torchrun, each running the same
`nodd train` command (without --nproc). Under torchrun or srun already, nothing is started.

No orphans: torchrun puts each worker in a session of its own, so killing the launcher (even
`kill -9` of its whole process group) used to leave the workers holding GPUs and ports. Here the
kernel ties each process to its parent (Linux PR_SET_PDEATHSIG): the torchrun agent gets SIGTERM
(relayed) when the launcher dies and stops its workers gracefully; each worker gets SIGKILL when
its agent dies. Run as `python -m pipeline.train.launch ARGS`, this module is torchrun itself,
tied to the launcher first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
LAUNCHER_PID = "NODD_LAUNCHER_PID"  # set by launch_local for the agent: the parent it must outlive
AGENT_PID = "NODD_AGENT_PID"  # set by the agent for its workers (they inherit its environment)


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
    env[LAUNCHER_PID] = str(os.getpid())
    # torchrun through this module's __main__ (not a preexec_fn: unsafe once torch has threads)
    command = [sys.executable, "-m", "pipeline.train.launch", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "pipeline.cli", *args]
    return subprocess.call(command, env=env)


def die_with_parent(sig: int, parent: int) -> None:
    """Have the kernel send `sig` to this process when its parent, pid `parent`, exits.

    The kernel watches the parent *thread* that forked this process, so the parent must start
    children from a thread that lives as long as it does (torchrun's agent and launch_local use
    their main thread). A no-op off Linux, which has no such mechanism.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl: the signal will never come, act now
        os.kill(os.getpid(), sig)


def die_with_torchrun_agent() -> None:
    """In a worker that torchrun started: SIGKILL when the agent dies, so `kill -9` of the agent
    (or of the launcher's process group, agent included) leaves no worker behind.

    SIGKILL, not SIGTERM: SIGTERM makes the trainer checkpoint, which takes collectives with every
    rank and the rendezvous store; with the agent gone the store is gone (torchrun hosts it) and
    other nodes' ranks carry on, so a checkpoint could hang for ever: the orphan we are avoiding.
    A graceful stop is still there: SIGTERM to the agent or the launcher reaches the workers.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not started by torchrun (srun, one process)
        return
    # Under a torchrun that launch_local did not start the agent's pid is unknown: trust the
    # current parent and accept the short window between the worker's start and this call.
    die_with_parent(signal.SIGKILL, int(os.environ.get(AGENT_PID, os.getppid())))


def _launcher_died(signum: int, frame: object) -> None:
    signal.signal(signum, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGTERM)  # torchrun stops its workers (they checkpoint) and exits


def _torchrun(args: list[str]) -> None:
    """torchrun, tied to the launcher that started it (first, before torch starts threads)."""
    launcher = os.environ.pop(LAUNCHER_PID, None)
    if launcher is not None:
        # Not SIGTERM directly: the kernel sends the death signal once per exiting launcher thread
        # (children pass to a sibling thread first), and a second SIGTERM makes torchrun abandon
        # its graceful shutdown. So the first SIGUSR2 (unused by torchrun) becomes one SIGTERM.
        signal.signal(signal.SIGUSR2, _launcher_died)
        die_with_parent(signal.SIGUSR2, int(launcher))
    os.environ[AGENT_PID] = str(os.getpid())
    from torch.distributed.run import main

    main(args)


if __name__ == "__main__":
    _torchrun(sys.argv[1:])

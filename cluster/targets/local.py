"""Local: the job on this machine, detached, so `nodd jobs ...` can follow it like any other.

Training with more than one process runs under `torchrun --standalone` (one node, a private
rendezvous); other commands run as they are. cluster/local_runner.py records the exit status
in RUN/job/local_state.json; the output goes to RUN/logs/local.log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cluster.job import PreparedJob
from cluster.records import FAILED, PENDING, UNKNOWN, JobRecord, JobStatus
from cluster.targets.base import Target, read_tail
from core.errors import ClusterError


class LocalTarget(Target):
    name = "local"

    def render(self, job: PreparedJob) -> dict[str, str]:
        import shlex

        return {"command.sh": "#!/bin/sh\n# what `nodd submit --target local` runs (detached)\nexec "
                              + shlex.join(job.single_node_argv()) + "\n"}

    def command(self, job: PreparedJob) -> list[str]:
        return [sys.executable, "-m", "cluster.local_runner", str(job.job_dir / "local_state.json"), "--",
                *job.single_node_argv()]

    def submit(self, job: PreparedJob) -> JobRecord:
        if job.spec.nodes > 1:
            raise ClusterError(f"the local target runs on one machine; job {job.spec.name} asks for "
                               f"{job.spec.nodes} nodes (use --target slurm or k8s, or set nodes=1)")
        log = open(job.log_dir / "local.log", "ab")
        env = dict(os.environ, **job.spec.env, PYTHONUNBUFFERED="1")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        proc = subprocess.Popen(self.command(job), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=str(job.workdir))
        log.close()
        return JobRecord(self.name, str(proc.pid), job.spec.name, str(job.run_dir),
                         details={"state": str(job.job_dir / "local_state.json"), "log": str(job.log_dir / "local.log")})

    def status(self, record: JobRecord) -> JobStatus:
        state = _state(record)
        if state is None:
            return JobStatus(PENDING if _alive(int(record.scheduler_id)) else UNKNOWN, "starting")
        if state["state"] == "RUNNING" and not _alive(state["pid"]):
            return JobStatus(FAILED, "the runner process is gone without recording an exit (killed?)")
        return JobStatus(state["state"], f"exit code {state['exit_code']}" if "exit_code" in state else "")

    def logs(self, record: JobRecord) -> str:
        return read_tail(Path(record.details["log"]))

    def cancel(self, record: JobRecord) -> None:
        pid = int(record.scheduler_id)
        if not _alive(pid):
            return
        os.killpg(pid, signal.SIGTERM)  # the runner leads its own session: the whole job gets it


def _state(record: JobRecord) -> dict | None:
    path = Path(record.details["state"])
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a finished child of this very process is a zombie until reaped: count it as gone
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True

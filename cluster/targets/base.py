"""What every target provides, and running scheduler commands without a shell."""

from __future__ import annotations

import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

from cluster.job import PreparedJob
from cluster.records import JobRecord, JobStatus
from core.errors import ClusterError


class Target(ABC):
    """A place jobs run. `render` returns the files to write into RUN/job/ (name -> text);
    `command` the argv that submits them (what --dry-run prints); the rest talk to the scheduler."""

    name: str

    @abstractmethod
    def render(self, job: PreparedJob) -> dict[str, str]:
        ...

    @abstractmethod
    def command(self, job: PreparedJob) -> list[str]:
        ...

    @abstractmethod
    def submit(self, job: PreparedJob) -> JobRecord:
        ...

    @abstractmethod
    def status(self, record: JobRecord) -> JobStatus:
        ...

    @abstractmethod
    def logs(self, record: JobRecord) -> str:
        ...

    @abstractmethod
    def cancel(self, record: JobRecord) -> None:
        ...


def run_tool(argv: list[str], what: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    """Run a scheduler client (argv, never a shell string). A missing binary or a refusal becomes
    a ClusterError that says what to do."""
    if shutil.which(argv[0]) is None:
        raise ClusterError(f"{argv[0]} is not installed or not on PATH: {what} needs it "
                           f"(run on a login node of the cluster, or install the client tools)")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"{argv[0]} did not answer within {timeout:.0f} s ({what}); is the scheduler up?") from None
    if check and done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise ClusterError(f"{what} failed: {argv[0]} said: {message[-1] if message else f'exit {done.returncode}'}")
    return done


def read_tail(path: Path, limit: int = 200_000) -> str:
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - limit))
        return f.read().decode("utf-8", errors="replace")

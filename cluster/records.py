"""Submitted jobs: one JSON record each, kept in a registry folder and in the job's run directory.

    $NODD_HOME/jobs/slurm-42.json     (NODD_HOME defaults to ~/.nodd)
    RUN_DIR/job/record.json           the same record, beside the resolved config and code version

`nodd jobs list|status|logs|cancel` read the registry, then ask the job's scheduler for the real
state; the record only says where to ask.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import ClusterError
from core.files import write_text_atomic

# States every target reports (each maps its scheduler's own words onto these).
PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, REQUEUED, UNKNOWN = (
    "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "REQUEUED", "UNKNOWN")
FINISHED = {COMPLETED, FAILED, CANCELLED}


@dataclass
class JobRecord:
    """Where a submitted job lives. `scheduler_id`: the Slurm job id, Ray submission id,
    Kubernetes object name or local process id; `details`: what the target needs to find it again."""

    target: str
    scheduler_id: str
    name: str
    run_dir: str
    submitted: float = field(default_factory=time.time)
    details: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.target}-{self.scheduler_id}"


@dataclass
class JobStatus:
    state: str
    detail: str = ""  # the scheduler's own words: reason, exit code, node list

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


def registry_dir() -> Path:
    return Path(os.environ.get("NODD_HOME", Path.home() / ".nodd")) / "jobs"


def save_record(record: JobRecord) -> None:
    text = json.dumps(asdict(record), indent=2)
    for path in (registry_dir() / f"{record.id}.json", Path(record.run_dir) / "job" / "record.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)


def load_record(job_id: str) -> JobRecord:
    path = registry_dir() / f"{job_id}.json"
    if not path.is_file():
        known = ", ".join(r.id for r in list_records()[-5:]) or "none"
        raise ClusterError(f"no submitted job {job_id!r} in {registry_dir()} (newest: {known}); "
                           "see `nodd jobs list`")
    return JobRecord(**json.loads(path.read_text(encoding="utf-8")))


def list_records() -> list[JobRecord]:
    records = []
    for path in registry_dir().glob("*.json"):
        try:
            records.append(JobRecord(**json.loads(path.read_text(encoding="utf-8"))))
        except (ValueError, TypeError):
            continue  # a record written by another version: not ours to list
    return sorted(records, key=lambda r: r.submitted)

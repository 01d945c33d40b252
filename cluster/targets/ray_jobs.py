"""Ray: submission to an existing cluster through the Ray Jobs REST API (the dashboard,
`ray.address` = http://HEAD:8265), with the standard library's HTTP client, so submitting needs
no Ray installed. The entrypoint is a shell command on the cluster: every part is quoted.

Prep runs against the cluster it was submitted to (`ray.address=auto`). Training runs on one
Ray worker with torchrun when procs_per_node > 1 (Ray places the entrypoint; multi-node training
belongs on Slurm or Kubernetes). Files the job reads (the resolved config, shards) must be on a
filesystem the cluster sees: the run directory is given as an absolute path.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path

from cluster.job import PreparedJob
from cluster.records import CANCELLED, COMPLETED, FAILED, PENDING, RUNNING, UNKNOWN, JobRecord, JobStatus
from cluster.targets.base import Target
from core.errors import ClusterError

STATES = {"PENDING": PENDING, "RUNNING": RUNNING, "SUCCEEDED": COMPLETED, "FAILED": FAILED, "STOPPED": CANCELLED}
PAYLOAD = "ray_job.json"


class RayTarget(Target):
    name = "ray"

    def payload(self, job: PreparedJob) -> dict:
        spec = job.spec
        argv = job.single_node_argv()
        if spec.command == "prep":
            argv.append("ray.address=auto")
        entrypoint = f"cd {shlex.quote(str(job.workdir))} && {shlex.join(argv)}"
        return {"entrypoint": entrypoint, "submission_id": submission_id(spec.name),
                "runtime_env": {"env_vars": {"PYTHONUNBUFFERED": "1", **spec.env}},
                "entrypoint_num_cpus": spec.ray.entrypoint_num_cpus,
                "metadata": {"nodd_job": spec.name, "run_dir": str(job.run_dir)}}

    def render(self, job: PreparedJob) -> dict[str, str]:
        return {PAYLOAD: json.dumps(self.payload(job), indent=2) + "\n"}

    def command(self, job: PreparedJob) -> list[str]:
        return ["POST", f"{job.spec.ray.address.rstrip('/')}/api/jobs/", str(job.job_dir / PAYLOAD)]

    def submit(self, job: PreparedJob) -> JobRecord:
        address = job.spec.ray.address.rstrip("/")
        payload = json.loads((job.job_dir / PAYLOAD).read_text(encoding="utf-8"))
        answer = request(address, "POST", "/api/jobs/", payload)
        sid = answer.get("submission_id") or payload["submission_id"]
        return JobRecord(self.name, sid, job.spec.name, str(job.run_dir), details={"address": address})

    def status(self, record: JobRecord) -> JobStatus:
        info = request(record.details["address"], "GET", f"/api/jobs/{record.scheduler_id}")
        state = info.get("status", "")
        return JobStatus(STATES.get(state, UNKNOWN), f"{state} {info.get('message') or ''}".strip())

    def logs(self, record: JobRecord) -> str:
        return request(record.details["address"], "GET", f"/api/jobs/{record.scheduler_id}/logs").get("logs", "")

    def cancel(self, record: JobRecord) -> None:
        request(record.details["address"], "POST", f"/api/jobs/{record.scheduler_id}/stop")


def submission_id(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _token() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def request(address: str, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict:
    """One call to the Ray Jobs API; unreachable clusters and refusals become ClusterError."""
    if not address.startswith(("http://", "https://")):
        raise ClusterError(f"ray.address {address!r} must be the dashboard URL, like http://HEAD:8265")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(address + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    token = _token()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            text = answer.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace").strip()[-500:]
        hint = " (token auth: set RAY_AUTH_TOKEN or copy the head's ~/.ray/auth_token)" if exc.code == 401 else ""
        raise ClusterError(f"Ray at {address} refused {method} {path}: HTTP {exc.code} {detail}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClusterError(f"cannot reach the Ray dashboard at {address} ({reason}); start one with "
                           "`ray start --head` or set ray.address to http://HEAD:8265") from None
    try:
        return json.loads(text) if text.strip() else {}
    except ValueError:
        raise ClusterError(f"Ray at {address} answered {method} {path} with something that is not JSON: "
                           f"{text[:200]!r}") from None

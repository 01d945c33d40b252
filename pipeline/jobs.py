"""`nodd submit` and `nodd jobs`: resolve a job's config here, then hand it to a cluster target.

    nodd submit --target local|slurm|ray|k8s --job configs/cluster/shapes_train.toml [--dry-run]
                [--set train.steps=50 ...] [job overrides like nodes=2 slurm.account=abc]
    nodd jobs list | status ID [--wait] | logs ID | cancel ID

The command's config (train, prep or tokenizer) is loaded and checked here, before anything is
submitted (a training job's parallel degrees against nodes x procs_per_node, for instance); the
job then runs the resolved copy in RUN/job/config.toml. `cluster/` decides where; this module
knows what.
"""

from __future__ import annotations

import time
from pathlib import Path

from cluster.job import PreparedJob
from cluster.records import JobRecord, JobStatus, list_records, load_record, save_record
from cluster.spec import JobSpec
from cluster.targets import get_target
from core.config import dumps_toml, load_config, to_dict, toml_value
from core.errors import ClusterError


def load_job(path: str | None, overrides: list[str], config_overrides: list[str]) -> JobSpec:
    spec = load_config(JobSpec, path, overrides)
    spec.overrides = [*spec.overrides, *config_overrides]
    return spec


def resolve_command_config(spec: JobSpec, run_dir: Path):
    """The command's config with the job's overrides, checked as the command itself would.
    A training job's run_dir is the job's run directory."""
    overrides = list(spec.overrides)
    if spec.command == "train":
        from pipeline.engines.base import check_layout
        from pipeline.train.config import TrainConfig

        cfg = load_config(TrainConfig, spec.config, overrides + [f"run_dir={toml_value(str(run_dir))}"])
        check_layout(cfg, spec.world_size)
    elif spec.command == "prep":
        from data_prep.config import PrepConfig

        cfg = load_config(PrepConfig, spec.config, overrides)
    else:
        from pipeline.tokenizer_train import TokenizerTrainConfig

        cfg = load_config(TokenizerTrainConfig, spec.config, overrides)
    return cfg


def prepare(spec: JobSpec, target: str) -> PreparedJob:
    container = target == "k8s"
    job = PreparedJob.build(spec, "", dumps_toml(to_dict(spec)), container=container)
    job.config_text = dumps_toml(to_dict(resolve_command_config(spec, job.run_dir)))
    return job


def submit(spec: JobSpec, target_name: str, dry_run: bool = False,
           job: PreparedJob | None = None) -> tuple[JobRecord | None, str]:
    """Render, then (unless dry_run) write RUN/job/ and submit. Returns the record and a report.
    `job`: the spec already prepared for this target (a sweep checks every point first)."""
    target = get_target(target_name)
    job = job or prepare(spec, target_name)
    files = target.render(job)
    if dry_run:
        parts = [f"# dry run: nothing written or submitted. Would write {job.job_dir}/config.toml, job.toml,",
                 "# code_version.json and these files, then run:", f"#   {' '.join(target.command(job))}"]
        for name, text in files.items():
            parts += [f"# ---- {job.job_dir / name}", text.rstrip("\n")]
        parts += [f"# ---- {job.config_path}", job.config_text.rstrip("\n")]
        return None, "\n".join(parts) + "\n"
    job.write()
    for name, text in files.items():
        (job.job_dir / name).write_text(text, encoding="utf-8")
    record = target.submit(job)
    save_record(record)
    return record, f"submitted {record.id} ({spec.command} {spec.name}); run directory {job.run_dir}"


def job_status(job_id: str) -> tuple[JobRecord, JobStatus]:
    record = load_record(job_id)
    return record, get_target(record.target).status(record)


def wait_for(job_id: str, timeout: float, poll: float = 2.0) -> JobStatus:
    """Poll until the job finishes (COMPLETED, FAILED, CANCELLED) or `timeout` seconds pass."""
    deadline = time.time() + timeout
    while True:
        _, status = job_status(job_id)
        if status.finished:
            return status
        if time.time() > deadline:
            raise ClusterError(f"job {job_id} is still {status.state} after {timeout:.0f} s ({status.detail})")
        time.sleep(poll)


def job_logs(job_id: str) -> str:
    record = load_record(job_id)
    return get_target(record.target).logs(record)


def cancel(job_id: str) -> None:
    record = load_record(job_id)
    get_target(record.target).cancel(record)


def table() -> str:
    """`nodd jobs list`: every recorded job with its scheduler's current word on it."""
    rows = ["ID                           STATE      NAME                 SUBMITTED            RUN DIR"]
    for record in list_records():
        try:
            state = get_target(record.target).status(record).state
        except ClusterError:
            state = "UNREACHABLE"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.submitted))
        rows.append(f"{record.id:28} {state:10} {record.name:20} {when}  {record.run_dir}")
    return "\n".join(rows)

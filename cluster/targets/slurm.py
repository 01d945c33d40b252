"""Slurm: one sbatch script per job, submitted with `sbatch --parsable`.

Training: one torchrun per node through `srun`, all meeting at a c10d rendezvous on the
allocation's first node. Pre-emption: Slurm sends SIGUSR1 to the batch script `grace_seconds`
before the time limit (`scancel --signal=USR1 --batch JOB` does it at once); the script passes
it down (srun -> torchrun -> every trainer), the trainers finish their step, checkpoint and exit
0, and the script requeues the job, which then resumes from that checkpoint (`--resume`).
Prep: a Ray cluster inside the allocation (head on the first node, workers on the others),
then `nodd prep` against it. Logs: RUN/logs/slurm-JOBID.out, appended across requeues.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from cluster.job import PreparedJob
from cluster.records import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    REQUEUED,
    RUNNING,
    UNKNOWN,
    JobRecord,
    JobStatus,
)
from cluster.targets.base import Target, read_tail, run_tool

STATES = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "SUSPENDED": PENDING, "RESV_DEL_HOLD": PENDING,
    "RUNNING": RUNNING, "COMPLETING": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING,
    "COMPLETED": COMPLETED,
    "FAILED": FAILED, "TIMEOUT": FAILED, "NODE_FAIL": FAILED, "OUT_OF_MEMORY": FAILED, "BOOT_FAIL": FAILED,
    "DEADLINE": FAILED,
    "CANCELLED": CANCELLED, "REVOKED": CANCELLED,
    "REQUEUED": REQUEUED, "REQUEUE_HOLD": REQUEUED, "REQUEUE_FED": REQUEUED, "PREEMPTED": REQUEUED,
    "RESIZING": RUNNING, "STOPPED": PENDING,
}
SCRIPT = "sbatch.sh"
q = shlex.quote


class SlurmTarget(Target):
    name = "slurm"

    def render(self, job: PreparedJob) -> dict[str, str]:
        return {SCRIPT: render_script(job)}

    def command(self, job: PreparedJob) -> list[str]:
        return ["sbatch", "--parsable", str(job.job_dir / SCRIPT)]

    def submit(self, job: PreparedJob) -> JobRecord:
        done = run_tool(self.command(job), "submitting the sbatch script")
        job_id = done.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            from core.errors import ClusterError

            raise ClusterError(f"sbatch answered {done.stdout.strip()!r}, not a job id")
        return JobRecord(self.name, job_id, job.spec.name, str(job.run_dir),
                         details={"log": str(job.log_dir / f"slurm-{job_id}.out")})

    def status(self, record: JobRecord) -> JobStatus:
        """squeue while the job is known to the controller, then scontrol (finished jobs stay
        MinJobAge seconds), then sacct (needs accounting), else the run directory's last word."""
        jid = record.scheduler_id
        done = run_tool(["squeue", "-h", "-j", jid, "-o", "%T|%r|%N"], "asking squeue", check=False)
        line = done.stdout.strip() if done.returncode == 0 else ""
        if line:
            state, reason, nodes = (line.split("|") + ["", ""])[:3]
            return JobStatus(STATES.get(state, UNKNOWN), f"{state} {reason} {nodes}".strip())
        done = run_tool(["scontrol", "show", "job", "-o", jid], "asking scontrol", check=False)
        if done.returncode == 0 and "JobState=" in done.stdout:
            fields = dict(kv.split("=", 1) for kv in done.stdout.split() if "=" in kv)
            state = fields.get("JobState", "")
            return JobStatus(STATES.get(state, UNKNOWN), f"{state} exit {fields.get('ExitCode', '?')} "
                                                         f"restarts {fields.get('Restarts', '0')}")
        done = run_tool(["sacct", "-n", "-P", "-X", "-j", jid, "-o", "State,ExitCode"], "asking sacct", check=False)
        rows = [r for r in done.stdout.strip().splitlines() if r] if done.returncode == 0 else []
        if rows:
            state, code = (rows[-1].split("|") + [""])[:2]
            state = state.split()[0]
            return JobStatus(STATES.get(state, UNKNOWN), f"{state} exit {code}")
        return JobStatus(UNKNOWN, "the controller no longer knows this job and accounting is off; "
                                  f"see {record.details.get('log')}")

    def logs(self, record: JobRecord) -> str:
        return read_tail(_log_path(record))

    def cancel(self, record: JobRecord) -> None:
        run_tool(["scancel", record.scheduler_id], f"cancelling Slurm job {record.scheduler_id}")


def _log_path(record: JobRecord) -> Path:
    return Path(record.details.get("log") or f"{record.run_dir}/logs/slurm-{record.scheduler_id}.out")


def render_script(job: PreparedJob) -> str:
    spec = job.spec
    lines = ["#!/bin/bash",
             f"# Rendered by `nodd submit --target slurm` for job {spec.name}. "
             f"Resubmit: sbatch {q(str(job.job_dir / SCRIPT))}",
             f"#SBATCH --job-name={spec.name}",
             f"#SBATCH --nodes={spec.nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --cpus-per-task={spec.cpus_per_node}",
             f"#SBATCH --mem={spec.memory}",
             f"#SBATCH --time={spec.time_limit}",
             f"#SBATCH --output={_sbatch_path(job.log_dir / 'slurm-%j.out')}",
             f"#SBATCH --chdir={_sbatch_path(job.workdir)}",
             "#SBATCH --open-mode=append"]
    if spec.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={spec.gpus_per_node}")
    for flag, value in (("partition", spec.partition), ("account", spec.slurm.account), ("qos", spec.slurm.qos)):
        if value:
            lines.append(f"#SBATCH --{flag}={_sbatch_word(value, flag)}")
    if spec.command == "train":
        lines.append("#SBATCH --requeue" if spec.slurm.requeue else "#SBATCH --no-requeue")
        lines.append(f"#SBATCH --signal=B:USR1@{spec.grace_seconds}")
    lines += [f"#SBATCH {_sbatch_word(option, 'slurm.extra')}" for option in spec.slurm.extra]
    lines += ["set -uo pipefail", ""]
    threads = max(1, spec.cpus_per_node // spec.procs) if spec.command == "train" else spec.cpus_per_node
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **spec.env}
    lines += [f"export {k}={q(v)}" for k, v in env.items()]
    lines += ['head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              'echo "nodd: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $SLURM_JOB_NODELIST"', ""]
    body = {"train": _train_body, "prep": _prep_body, "tokenizer": _single_body}[spec.command]
    return "\n".join(lines + body(job)) + "\n"


def _srun(job: PreparedJob, *options: str) -> list[str]:
    argv = ["srun", *options]
    if job.spec.container_image:  # pyxis/enroot
        argv.append(f"--container-image={job.spec.container_image}")
        if job.spec.mounts:
            argv.append(f"--container-mounts={','.join(job.spec.mounts)}")
    return argv


def _train_body(job: PreparedJob) -> list[str]:
    spec = job.spec
    # jobs sharing a node must not share a rendezvous port: derive it from the job id unless fixed
    port = str(spec.slurm.master_port) if spec.slurm.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    torchrun = [job.python, "-m", "torch.distributed.run", f"--nnodes={spec.nodes}",
                f"--nproc-per-node={spec.procs}", "--rdzv-backend=c10d", f"--shutdown-timeout={spec.grace_seconds}",
                # torchrun passes these on to the trainers (SIGUSR1: checkpoint and exit 0)
                "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"]
    launch = " ".join([*map(q, _srun(job, "--kill-on-bad-exit=1", f"--nodes={spec.nodes}", "--ntasks-per-node=1")),
                       *map(q, torchrun), '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"',
                       *map(q, ["-m", "pipeline.cli", *job.nodd_args()])])
    backend = "NCCL" if spec.gpus_per_node else "gloo"
    return [
        f"# Rendezvous (c10d) on the first node; {spec.nodes} node(s) x {spec.procs} process(es); {backend} picks",
        "# the interface itself (set NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME in `env` if it picks wrong).",
        'export MASTER_ADDR="$head_node"' + f' MASTER_PORT="{port}"',
        "export TORCH_NCCL_ASYNC_ERROR_HANDLING=1",
        "preempted=0",
        "on_preempt() {",
        "  preempted=1",
        '  echo "nodd: pre-emption notice: the trainers checkpoint and stop"',
        '  kill -USR1 "$step" 2>/dev/null',
        "}",
        "trap on_preempt USR1",
        launch + " &",
        "step=$!",
        "# `wait` returns when a trapped signal arrives: wait again until the step has ended",
        'while true; do wait "$step"; status=$?; kill -0 "$step" 2>/dev/null || break; done',
        'if [ "$preempted" = 1 ]; then',
        '  echo "nodd: checkpoint saved (exit $status); requeueing job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        'echo "nodd: training finished with exit code $status"',
        'exit "$status"',
    ]


def _prep_body(job: PreparedJob) -> list[str]:
    spec = job.spec
    port = spec.slurm.ray_port
    ray = [job.python, "-m", "ray.scripts.scripts"]
    resolve = [job.python, "-c", "import socket, sys; print(socket.gethostbyname(sys.argv[1]))"]
    probe = [job.python, "-c", "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"]
    head = " ".join([*map(q, _srun(job, "--nodes=1", "--ntasks=1", "--overlap")), '-w "$head_node"',
                     *map(q, ray), "start", "--head", '--node-ip-address="$head_ip"', f"--port={port}",
                     '--num-cpus="$SLURM_CPUS_PER_TASK"', "--include-dashboard=false", "--block"])
    lines = [
        "# A Ray cluster inside the allocation: head on the first node, workers on the others.",
        "head_ip=$(" + " ".join(map(q, resolve)) + ' "$head_node")',
        f'export RAY_ADDRESS="$head_ip:{port}"',
        head + " &",
        "ray_pids=$!",
        "# ready when the head's GCS port accepts connections",
        "for _ in $(seq 240); do",
        "  " + " ".join(map(q, probe)) + f' "$head_ip" {port} 2>/dev/null && break',
        "  sleep 0.5",
        "done",
    ]
    if spec.nodes > 1:
        workers = " ".join([*map(q, _srun(job, f"--nodes={spec.nodes - 1}", f"--ntasks={spec.nodes - 1}",
                                          "--ntasks-per-node=1", "--overlap")), '--exclude="$head_node"',
                            *map(q, ray), "start", '--address="$RAY_ADDRESS"', '--num-cpus="$SLURM_CPUS_PER_TASK"',
                            "--block"])
        lines += [workers + " &", 'ray_pids="$ray_pids $!"', "sleep 5"]
    prep = " ".join([*map(q, job.nodd_argv()), '"ray.address=$RAY_ADDRESS"'])
    return lines + [
        prep,
        "status=$?",
        "# stop only the Ray processes this job started (never `ray stop`: it kills every Ray on the node)",
        "kill $ray_pids 2>/dev/null; wait",
        'echo "nodd: prep finished with exit code $status"',
        'exit "$status"',
    ]


def _single_body(job: PreparedJob) -> list[str]:
    return [" ".join(map(q, _srun(job, "--ntasks=1") + job.nodd_argv())),
            "status=$?", 'echo "nodd: finished with exit code $status"', 'exit "$status"']


def _sbatch_path(path) -> str:
    """#SBATCH lines are not shell-parsed: a path with spaces or quotes cannot be expressed there."""
    text = str(path)
    if any(c.isspace() or c in "\"'\\" for c in text):
        from core.errors import ConfigError

        raise ConfigError(f"run_dir {text!r}: Slurm's #SBATCH --output cannot hold spaces or quotes; "
                          "choose a run directory without them")
    return text


def _sbatch_word(value: str, field: str) -> str:
    if any(c.isspace() or c in "\"'\\$`;" for c in value):
        from core.errors import ConfigError

        raise ConfigError(f"{field} {value!r}: #SBATCH options cannot hold spaces, quotes or shell characters")
    return value

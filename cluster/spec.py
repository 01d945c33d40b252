"""JobSpec: what to run (`nodd train|prep|tokenizer train` with a config), on how much, and where.

    # configs/cluster/shapes_train.toml
    name = "shapes"
    command = "train"
    config = "configs/train/shapes.toml"
    overrides = ["train.steps=300"]
    nodes = 1
    procs_per_node = 2
    [slurm]
    partition = "debug"

Read by `nodd submit --job FILE [key=value ...]` (core/config.py fills it strictly). The same
spec renders for every target; only `--target` changes. Every string that reaches a scheduler
is checked here (no control characters; names from a safe alphabet) and then quoted by the
renderer, never handed to a shell as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from core.errors import ConfigError

COMMANDS = {"train": ["train"], "prep": ["prep"], "tokenizer": ["tokenizer", "train"]}
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$")  # valid for Slurm, Ray and Kubernetes alike
DURATION = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")  # Slurm's [days-]hours:minutes:seconds
MEMORY = re.compile(r"^\d+[KMGT]?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SlurmOptions:
    """Slurm-only settings.

    Fields:
        account, qos: passed as --account / --qos when set.
        requeue: requeue after pre-emption (needs JobRequeue or --requeue, set here).
        master_port: torchrun's rendezvous port; 0 = 20000 + job id % 20000, so jobs sharing a
            node never meet at the same port.
        ray_port: port of the Ray head a prep job starts.
        extra: more sbatch options, one per item, e.g. ["--constraint=h100", "--exclusive"].
    """

    account: str = ""
    qos: str = ""
    requeue: bool = True
    master_port: int = 0
    ray_port: int = 6379
    extra: list[str] = field(default_factory=list)


@dataclass
class RayOptions:
    """Ray Jobs API target: `address` is the cluster's dashboard (http://HEAD:8265). The token
    for a cluster with token auth comes from RAY_AUTH_TOKEN or ~/.ray/auth_token."""

    address: str = "http://127.0.0.1:8265"
    entrypoint_num_cpus: float = 1.0


@dataclass
class K8sOptions:
    """Kubernetes target. Manifests are always rendered into the run directory; with `apply`
    they go to the cluster through `kubectl --context CONTEXT apply`.

    Fields:
        runs_volume: PersistentVolumeClaim mounted at the run directory's path in every pod
            (checkpoints and logs must outlive pods); empty = an emptyDir (tests, dry runs).
        ray_version: Ray version of the KubeRay cluster (match the image's).
    """

    namespace: str = "default"
    context: str = ""
    apply: bool = False
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str = ""
    runs_volume: str = ""
    ray_version: str = "2.60.0"


@dataclass
class JobSpec:
    """One job.

    Fields:
        name: job name (lowercase letters, digits, '-'; at most 48), used by every scheduler.
        command: "train", "prep" or "tokenizer" (`nodd tokenizer train`).
        config: the command's TOML file; with `overrides` it is resolved at submission and the
            resolved file is what the job runs (a copy lives in RUN_DIR/job/).
        overrides: key=value overrides of that config.
        run_dir: where the job writes everything (checkpoints, logs, job records); must be on a
            filesystem every node sees. Default runs/jobs/NAME.
        nodes, procs_per_node: training processes = nodes x procs_per_node (0 = one per GPU,
            or 1 without GPUs).
        gpus_per_node, cpus_per_node, memory ("64G"), time_limit ("HH:MM:SS" or "D-HH:MM:SS").
        partition: Slurm partition; on Kubernetes the Kueue queue label.
        container_image: image for Kubernetes (required there) and Slurm+pyxis (optional).
        env: extra environment variables for every process.
        mounts: "host_path:container_path" pairs for containers.
        python: the interpreter with nodd installed, on the nodes; "" = the one submitting
            (local, Slurm and Ray with a shared filesystem) or "python" (containers).
        grace_seconds: time to checkpoint on pre-emption. Slurm sends SIGUSR1 to the batch script
            this long before the time limit (`scancel --signal=USR1 --batch` does it at once), the
            trainers checkpoint and the job requeues itself; on Kubernetes it is the pods'
            termination grace period. torchrun waits this long for its trainers to stop.
    """

    name: str = "nodd"
    command: Literal["train", "prep", "tokenizer"] = "train"
    config: str = ""
    overrides: list[str] = field(default_factory=list)
    run_dir: str = ""
    nodes: int = 1
    procs_per_node: int = 0
    gpus_per_node: int = 0
    cpus_per_node: int = 2
    memory: str = "8G"
    time_limit: str = "01:00:00"
    partition: str = ""
    container_image: str = ""
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    python: str = ""
    grace_seconds: int = 120
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    ray: RayOptions = field(default_factory=RayOptions)
    k8s: K8sOptions = field(default_factory=K8sOptions)

    def validate(self) -> None:
        if not NAME.match(self.name):
            raise ConfigError(f"job name {self.name!r} must be 1-48 lowercase letters, digits or '-', starting and "
                              "ending with a letter or digit (Slurm, Ray and Kubernetes all accept that)")
        if not self.config:
            raise ConfigError("the job needs `config`: the TOML file of its command (e.g. configs/train/shapes.toml)")
        for name, value in (("nodes", self.nodes), ("cpus_per_node", self.cpus_per_node),
                            ("grace_seconds", self.grace_seconds)):
            if value < 1:
                raise ConfigError(f"job {name} must be >= 1, got {value}")
        if self.procs_per_node < 0 or self.gpus_per_node < 0:
            raise ConfigError("job procs_per_node and gpus_per_node must be >= 0")
        if not DURATION.match(self.time_limit):
            raise ConfigError(f"job time_limit {self.time_limit!r} must look like HH:MM:SS or D-HH:MM:SS")
        if not MEMORY.match(self.memory):
            raise ConfigError(f"job memory {self.memory!r} must look like 8G or 512M")
        if self.command == "tokenizer" and self.nodes > 1:
            raise ConfigError("`nodd tokenizer train` runs on one node; set nodes=1")
        for key in self.env:
            if not ENV_NAME.match(key):
                raise ConfigError(f"environment variable name {key!r} is not valid (letters, digits, _)")
        for mount in self.mounts:
            if mount.count(":") != 1 or not all(mount.split(":")):
                raise ConfigError(f"mount {mount!r} must look like /host/path:/container/path")
        check_text(self)

    @property
    def procs(self) -> int:
        """Training processes per node."""
        return self.procs_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs if self.command == "train" else 1

    def nodd_args(self, config_path: str) -> list[str]:
        """The `nodd` arguments the job runs (after `python -m pipeline.cli`). Training always
        passes --resume: a requeued or restarted job continues its run directory."""
        args = [*COMMANDS[self.command], "--config", config_path]
        return args + ["--resume"] if self.command == "train" else args


def check_text(spec: JobSpec) -> None:
    """Refuse control characters (newlines, NUL, escapes) anywhere in the spec: they could end a
    line of an sbatch script or a YAML scalar. Quotes, spaces, `$(...)` and `;` are allowed in
    values; renderers quote them."""
    def walk(value, where):
        if isinstance(value, str):
            if any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ConfigError(f"job {where} contains a control character (newline, tab, NUL...): {value!r}; "
                                  "remove it")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k, f"{where}.{k}")
                walk(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif hasattr(value, "__dataclass_fields__"):
            for k in value.__dataclass_fields__:
                walk(getattr(value, k), f"{where}.{k}" if where else k)

    walk(spec, "")

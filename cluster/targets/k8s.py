"""Kubernetes: rendered manifests, applied with kubectl when `k8s.apply` is set.

    train      ConfigMap (the resolved config) + Kubeflow PyTorchJob: a Master and nodes-1 Workers,
               each pod one torchrun that reads its rendezvous from the operator's PET_* variables
    prep       ConfigMap + KubeRay RayJob: a Ray cluster (head + nodes-1 workers) that runs
               `nodd prep` and shuts down after it
    tokenizer  ConfigMap + batch/v1 Job

Pre-emption and eviction send SIGTERM to torchrun, which passes it to the trainers: they
checkpoint and exit, and the replica restarts with `--resume` (restartPolicy OnFailure).
`validate(docs)` deserializes every pod template (and the whole ConfigMap / Job) with the
official `kubernetes` client models, catching wrong types and missing required fields.
"""

from __future__ import annotations

import inspect
import json
import shlex

from cluster.job import PreparedJob
from cluster.records import COMPLETED, FAILED, PENDING, RUNNING, UNKNOWN, JobRecord, JobStatus
from cluster.targets.base import Target, run_tool
from cluster.targets.ray_jobs import STATES as RAY_STATES
from core.errors import ClusterError, ConfigError

MANIFESTS = "manifests.yaml"
CONFIG_DIR = "/etc/nodd"
KINDS = {"train": "PyTorchJob", "prep": "RayJob", "tokenizer": "Job"}


class K8sTarget(Target):
    name = "k8s"

    def documents(self, job: PreparedJob) -> list[dict]:
        spec = job.spec
        if not spec.container_image:
            raise ConfigError("the k8s target needs container_image (an image with nodd installed, "
                              "e.g. one built from docker/Dockerfile.gpu)")
        config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": _metadata(job, f"{spec.name}-config"),
                      "data": {"config.toml": job.config_text}}
        build = {"train": _pytorch_job, "prep": _ray_job, "tokenizer": _batch_job}[spec.command]
        return [config_map, build(job)]

    def render(self, job: PreparedJob) -> dict[str, str]:
        docs = self.documents(job)
        validate(docs)
        return {MANIFESTS: dump(docs)}

    def command(self, job: PreparedJob) -> list[str]:
        return [*_kubectl(job.spec.k8s.context), "apply", "-f", str(job.job_dir / MANIFESTS)]

    def submit(self, job: PreparedJob) -> JobRecord:
        if not job.spec.k8s.apply:
            raise ClusterError(f"manifests rendered to {job.job_dir / MANIFESTS} but k8s.apply is false: apply them "
                               "with `kubectl apply -f` or submit again with k8s.apply=true")
        run_tool(self.command(job), "kubectl apply")
        return JobRecord(self.name, job.spec.name, job.spec.name, str(job.run_dir),
                         details={"namespace": job.spec.k8s.namespace, "context": job.spec.k8s.context,
                                  "kind": KINDS[job.spec.command]})

    def status(self, record: JobRecord) -> JobStatus:
        d = record.details
        done = run_tool([*_kubectl(d["context"]), "get", d["kind"], record.scheduler_id, "-n", d["namespace"],
                         "-o", "json"], "kubectl get")
        status = json.loads(done.stdout).get("status", {})
        if d["kind"] == "RayJob":
            state = status.get("jobStatus", "PENDING")  # the Ray Jobs states, as the Ray target reads them
            return JobStatus(RAY_STATES.get(state, UNKNOWN), state)
        conditions = [c for c in status.get("conditions", []) if c.get("status") == "True"]
        if not conditions:
            return JobStatus(PENDING, "no condition yet")
        last = conditions[-1]["type"]
        mapping = {"Created": PENDING, "Running": RUNNING, "Restarting": RUNNING, "Succeeded": COMPLETED,
                   "Complete": COMPLETED, "Failed": FAILED, "Suspended": PENDING}
        return JobStatus(mapping.get(last, UNKNOWN), last)

    def logs(self, record: JobRecord) -> str:
        d = record.details
        selector = {"PyTorchJob": "training.kubeflow.org/job-name", "RayJob": "job-name", "Job": "job-name"}[d["kind"]]
        done = run_tool([*_kubectl(d["context"]), "logs", "-n", d["namespace"], "-l",
                         f"{selector}={record.scheduler_id}", "--all-containers", "--prefix", "--tail=-1"],
                        "kubectl logs")
        return done.stdout

    def cancel(self, record: JobRecord) -> None:
        d = record.details
        run_tool([*_kubectl(d["context"]), "delete", d["kind"], record.scheduler_id, "-n", d["namespace"]],
                 "kubectl delete")


def _kubectl(context: str) -> list[str]:
    return ["kubectl", "--context", context] if context else ["kubectl"]


def _metadata(job: PreparedJob, name: str) -> dict:
    labels = {"app.kubernetes.io/managed-by": "nodd", "nodd.dev/job": job.spec.name}
    if job.spec.partition:
        labels["kueue.x-k8s.io/queue-name"] = job.spec.partition
    return {"name": name, "namespace": job.spec.k8s.namespace, "labels": labels}


def _quantity(memory: str) -> str:
    """Slurm-style sizes are binary (8G = 8 GiB); Kubernetes spells that 8Gi. Bare numbers are MiB."""
    return memory + "i" if memory[-1] in "KMGT" else memory + "Mi"


def _pod(job: PreparedJob, container: str, command: list[str] | None, ray_node: bool = False) -> dict:
    spec = job.spec
    resources = {"cpu": str(spec.cpus_per_node), "memory": _quantity(spec.memory)}
    if spec.gpus_per_node:
        resources["nvidia.com/gpu"] = str(spec.gpus_per_node)
    runs = ({"persistentVolumeClaim": {"claimName": spec.k8s.runs_volume}} if spec.k8s.runs_volume
            else {"emptyDir": {}})
    volumes = [{"name": "config", "configMap": {"name": f"{spec.name}-config"}},
               {"name": "runs", **runs},
               {"name": "dshm", "emptyDir": {"medium": "Memory"}}]  # NCCL and loader workers need /dev/shm
    mounts = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
              {"name": "runs", "mountPath": str(job.run_dir)},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    for i, pair in enumerate(spec.mounts):
        host, target = pair.split(":")
        volumes.append({"name": f"mount-{i}", "hostPath": {"path": host}})
        mounts.append({"name": f"mount-{i}", "mountPath": target})
    env = [{"name": k, "value": v} for k, v in {"PYTHONUNBUFFERED": "1", **spec.env}.items()]
    main = {"name": container, "image": spec.container_image, "imagePullPolicy": spec.k8s.image_pull_policy,
            "env": env, "resources": {"requests": resources, "limits": resources}, "volumeMounts": mounts}
    if command is not None:
        main["command"] = command
    if not ray_node:
        main["workingDir"] = str(job.run_dir)
    pod_spec = {"containers": [main], "volumes": volumes,
                "terminationGracePeriodSeconds": spec.grace_seconds}
    if spec.k8s.service_account:
        pod_spec["serviceAccountName"] = spec.k8s.service_account
    return {"metadata": {"labels": _metadata(job, spec.name)["labels"]}, "spec": pod_spec}


def _pytorch_job(job: PreparedJob) -> dict:
    spec = job.spec
    # No rendezvous flags: the training operator sets PET_NNODES, PET_NPROC_PER_NODE,
    # PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads.
    command = [job.python, "-m", "torch.distributed.run", f"--shutdown-timeout={max(1, spec.grace_seconds - 10)}",
               "-m", "pipeline.cli", *job.nodd_args(f"{CONFIG_DIR}/config.toml")]
    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": _pod(job, "pytorch", command)}}
    if spec.nodes > 1:
        replicas["Worker"] = {"replicas": spec.nodes - 1, "restartPolicy": "OnFailure",
                              "template": _pod(job, "pytorch", command)}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": _metadata(job, spec.name),
            "spec": {"nprocPerNode": str(spec.procs), "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": 20},
                     "pytorchReplicaSpecs": replicas}}


def _ray_job(job: PreparedJob) -> dict:
    spec = job.spec
    entrypoint = shlex.join([job.python, "-m", "pipeline.cli", *job.nodd_args(f"{CONFIG_DIR}/config.toml"),
                             "ray.address=auto"])
    cluster = {"rayVersion": spec.k8s.ray_version,
               "headGroupSpec": {"rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": str(spec.cpus_per_node)},
                                 "template": _pod(job, "ray-head", None, ray_node=True)}}
    if spec.nodes > 1:
        n = spec.nodes - 1
        cluster["workerGroupSpecs"] = [{"groupName": "workers", "replicas": n, "minReplicas": n, "maxReplicas": n,
                                        "rayStartParams": {"num-cpus": str(spec.cpus_per_node)},
                                        "template": _pod(job, "ray-worker", None, ray_node=True)}]
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _metadata(job, spec.name),
            "spec": {"entrypoint": entrypoint, "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 3600,
                     "runtimeEnvYAML": json.dumps({"env_vars": {"PYTHONUNBUFFERED": "1", **spec.env}}),
                     "rayClusterSpec": cluster}}


def _batch_job(job: PreparedJob) -> dict:
    pod = _pod(job, "nodd", job.nodd_argv(f"{CONFIG_DIR}/config.toml"))
    pod["spec"]["restartPolicy"] = "OnFailure"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(job, job.spec.name),
            "spec": {"backoffLimit": 3, "template": pod}}


def dump(docs: list[dict]) -> str:
    """YAML, multi-line strings (the config in the ConfigMap) as readable literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # Master and Worker share objects: write both out in full
            return True

    def text(dumper, value: str):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, width=120)


def validate(docs: list[dict]) -> None:
    """Deserialize with the kubernetes client's models where installed (`pip install kubernetes`).
    Custom resources (PyTorchJob, RayJob) are checked through their pod templates and the fields
    their controllers require."""
    try:
        from kubernetes.client import ApiClient
    except ImportError:
        return
    client = ApiClient()
    # kubernetes >= 35 takes the response text; older clients a response object with .data
    takes_text = "response_text" in inspect.signature(client.deserialize).parameters

    def check(obj: dict, model: str, where: str) -> None:
        class Answer:
            data = json.dumps(obj)

        try:
            if takes_text:
                client.deserialize(Answer.data, model, "application/json")
            else:
                client.deserialize(Answer(), model)
        except (ValueError, TypeError) as exc:
            raise ClusterError(f"rendered {where} is not a valid {model}: {exc}") from None

    for doc in docs:
        kind = doc["kind"]
        if kind in ("ConfigMap", "Job"):
            check(doc, f"V1{kind}", kind)
        elif kind == "PyTorchJob":
            for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
                if not isinstance(replica.get("replicas"), int) or replica["replicas"] < 1:
                    raise ClusterError(f"PyTorchJob {role}: replicas must be a positive integer")
                check(replica["template"], "V1PodTemplateSpec", f"PyTorchJob {role} template")
        elif kind == "RayJob":
            if not doc["spec"].get("entrypoint"):
                raise ClusterError("RayJob: entrypoint is required")
            cluster = doc["spec"]["rayClusterSpec"]
            check(cluster["headGroupSpec"]["template"], "V1PodTemplateSpec", "RayJob head template")
            for group in cluster.get("workerGroupSpecs", []):
                check(group["template"], "V1PodTemplateSpec", f"RayJob {group['groupName']} template")

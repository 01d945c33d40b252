"""The places a job can run: local (this machine), slurm, ray (Jobs API), k8s (manifests)."""

from __future__ import annotations

from cluster.targets.base import Target

TARGETS = ("local", "slurm", "ray", "k8s")


def get_target(name: str) -> Target:
    if name == "local":
        from cluster.targets.local import LocalTarget

        return LocalTarget()
    if name == "slurm":
        from cluster.targets.slurm import SlurmTarget

        return SlurmTarget()
    if name == "ray":
        from cluster.targets.ray_jobs import RayTarget

        return RayTarget()
    if name == "k8s":
        from cluster.targets.k8s import K8sTarget

        return K8sTarget()
    from core.errors import ConfigError

    raise ConfigError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}")

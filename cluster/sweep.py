"""Sweeps: a grid over job and config keys, expanded into one job per combination.

    # configs/sweep/shapes_scaling.toml
    name = "shapes-scaling"
    job = "configs/cluster/shapes_train.toml"
    target = "slurm"
    [grid]
    "model.width" = [128, 256]           # keys of the command's config
    "parallel.tp" = [1, 2]
    "job.nodes" = [1, 2]                 # "job." keys change the JobSpec (nodes, procs_per_node...)

Each combination becomes job NAME-000, NAME-001, ... with run directory RUN_ROOT/NAME-000; the
pipeline checks every one (degrees divide the world size, heads by tp, depth by pp) before any
is submitted, and `nodd sweep report` reads the run directories back.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

from core.config import toml_value
from core.errors import ConfigError


@dataclass
class SweepSpec:
    """Fields:
        name: sweep name, prefix of every job name.
        job: the base JobSpec TOML (configs/cluster/...).
        target: local, slurm, ray or k8s.
        job_overrides: JobSpec overrides for every job (e.g. ["slurm.account=abc"]).
        grid: key -> list of values; every combination is one job.
        run_root: parent of the jobs' run directories (default runs/sweeps/NAME).
    """

    name: str = "sweep"
    job: str = ""
    target: Literal["local", "slurm", "ray", "k8s"] = "local"
    job_overrides: list[str] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)
    run_root: str = ""

    def validate(self) -> None:
        if not self.job:
            raise ConfigError("the sweep needs `job`: the base job spec (e.g. configs/cluster/shapes_train.toml)")
        if not self.grid:
            raise ConfigError("the sweep needs a [grid] table: key = [values, ...]")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid key {key!r} needs a non-empty list of values")
            if any(isinstance(v, (dict, list)) for v in values):
                raise ConfigError(f"grid key {key!r}: values must be numbers, strings or booleans")


@dataclass
class SweepPoint:
    name: str
    params: dict  # grid key -> value of this combination
    job_overrides: list[str]  # JobSpec overrides (the sweep's own, then the grid's job.* keys)
    config_overrides: list[str]  # the command config's overrides from the grid
    run_dir: str


def expand(sweep: SweepSpec) -> list[SweepPoint]:
    root = sweep.run_root or f"runs/sweeps/{sweep.name}"
    keys = list(sweep.grid)
    points = []
    for i, values in enumerate(itertools.product(*(sweep.grid[k] for k in keys))):
        params = dict(zip(keys, values))
        name = f"{sweep.name}-{i:03d}"
        job_over = [*sweep.job_overrides, f"name={toml_value(name)}", f"run_dir={toml_value(f'{root}/{name}')}"]
        config_over = []
        for key, value in params.items():
            item = f"{key.removeprefix('job.')}={toml_value(value)}"
            (job_over if key.startswith("job.") else config_over).append(item)
        points.append(SweepPoint(name, params, job_over, config_over, f"{root}/{name}"))
    return points

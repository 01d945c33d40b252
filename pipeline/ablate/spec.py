"""AblateSpec: one ablation grid, read from TOML with an optional preset applied on top.

    name = "dd"
    train_config = "configs/train/shapes.toml"     # the backbone, data mix and recipe of every arm
    job = "configs/cluster/shapes_train.toml"      # resources of one arm's job
    steps = 600                                    # the reference arm's steps; the FLOP budget
    [[tokenizers]]  name = "kl"  config = "configs/tokenizer/shapes_kl.toml"  overrides = [...]
    [[arms]]        name = "transfusion"  tokenizer = "kl"  overrides = ["model.mode=\"transfusion\""]
    [presets.quick] steps = 150  seeds = 2 ...     # `--preset quick` merges this table over the rest
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.config import from_dict, read_toml
from core.errors import ConfigError
from pipeline.train.config import EvalConfig

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


@dataclass
class TokenizerSpec:
    """An image tokenizer of the grid: `nodd tokenizer train --config CONFIG OVERRIDES...`."""

    name: str = ""
    config: str = ""
    overrides: list[str] = field(default_factory=list)


@dataclass
class ArmSpec:
    """One way to generate images: the train config's overrides, on the shards of `tokenizer`."""

    name: str = ""
    tokenizer: str = "kl"
    overrides: list[str] = field(default_factory=list)


@dataclass
class AblateSpec:
    """Fields:
        name, run_root: the grid's name and its folder (default runs/ablate/NAME).
        target: where arms run (local runs them one at a time; slurm, ray, k8s submit them all).
        train_config, train_overrides: the recipe every arm shares.
        job, job_overrides: the JobSpec of one arm (procs_per_node, time_limit, slurm.account...).
        steps: training steps of the reference arm; every arm trains for the same FLOPs
            (pipeline/train/metrics.py FlopCounter), so its steps differ.
        reference_arm: the arm whose `steps` set the FLOP budget (default the first).
        seeds: seeds per arm (train.seed and data.seed); the report's spread is over them.
        samples: images per shard set (the same images, encoded by every tokenizer).
        tokenizer_steps: training steps of every image tokenizer.
        prep_overrides: overrides of configs/prep/shapes.toml for every shard set (use_ray=false...).
        max_running: arms running at once (0: 1 on the local target, all elsewhere).
        eval: `nodd eval` settings each arm's job runs when its training ends.
        tokenizers, arms: the grid.
    """

    name: str = "dd"
    run_root: str = ""
    target: Literal["local", "slurm", "ray", "k8s"] = "local"
    train_config: str = "configs/train/shapes.toml"
    train_overrides: list[str] = field(default_factory=list)
    job: str = "configs/cluster/shapes_train.toml"
    job_overrides: list[str] = field(default_factory=list)
    steps: int = 600
    reference_arm: str = ""
    seeds: int = 3
    samples: int = 20000
    tokenizer_steps: int = 350
    prep_overrides: list[str] = field(default_factory=list)
    max_running: int = 0
    eval: EvalConfig = field(default_factory=EvalConfig)
    tokenizers: list[TokenizerSpec] = field(default_factory=list)
    arms: list[ArmSpec] = field(default_factory=list)
    presets: dict[str, dict] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.run_root or f"runs/ablate/{self.name}")

    @property
    def reference(self) -> ArmSpec:
        return next(a for a in self.arms if a.name == (self.reference_arm or self.arms[0].name))

    def validate(self) -> None:
        if not self.arms or not self.tokenizers:
            raise ConfigError("the ablation needs [[tokenizers]] and [[arms]] tables (see configs/ablate/dd.toml)")
        for kind, items in (("tokenizer", self.tokenizers), ("arm", self.arms)):
            names = [item.name for item in items]
            for item in items:
                if not NAME.match(item.name):
                    raise ConfigError(f"{kind} name {item.name!r} must be 1-31 lowercase letters, digits or '-'")
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind} names must be unique, got {names}")
        known = {t.name for t in self.tokenizers}
        for arm in self.arms:
            if arm.tokenizer not in known:
                raise ConfigError(f"arm {arm.name} uses tokenizer {arm.tokenizer!r}; define it in [[tokenizers]] "
                                  f"(have: {', '.join(sorted(known))})")
        if self.reference_arm and self.reference_arm not in {a.name for a in self.arms}:
            raise ConfigError(f"reference_arm={self.reference_arm!r} is not one of the arms")
        if min(self.steps, self.seeds, self.samples, self.tokenizer_steps) < 1 or self.max_running < 0:
            raise ConfigError("steps, seeds, samples and tokenizer_steps must be >= 1, max_running >= 0")
        self.eval.validate()


def load_spec(path: str | Path, preset: str | None = None, overrides: dict | None = None) -> AblateSpec:
    """The spec at `path`, with `[presets.PRESET]` merged over it, then `overrides` (e.g. seeds)."""
    data = read_toml(path)
    if preset:
        presets = data.get("presets", {})
        if preset not in presets:
            raise ConfigError(f"{path} has no preset {preset!r}; choose one of: {', '.join(sorted(presets)) or 'none'}")
        data = _merged(data, presets[preset])
    data = _merged(data, overrides or {})
    spec = from_dict(AblateSpec, data)
    spec.validate()
    return spec


def _merged(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out

"""A JobSpec made concrete for submission: absolute paths, the interpreter, the exact command.

    job = PreparedJob.build(spec, resolved_config_text, container=False)
    job.nodd_argv()        # [python, -m, pipeline.cli, train, --config, RUN/job/config.toml, --resume]
    job.write()            # RUN/job/{config.toml, job.toml, code_version.json, code.patch}

The job always runs the resolved config copied into its run directory, never the original file
with overrides: the run can be repeated and resumed exactly, whatever happens to configs/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.spec import JobSpec

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PreparedJob:
    spec: JobSpec
    run_dir: Path  # absolute
    config_text: str  # the resolved config of the command (TOML)
    spec_text: str  # the resolved job spec (TOML)
    python: str
    workdir: Path  # where the job starts: the submitting directory, so relative paths in configs hold

    @classmethod
    def build(cls, spec: JobSpec, config_text: str, spec_text: str, container: bool = False) -> "PreparedJob":
        run_dir = Path(spec.run_dir or f"runs/jobs/{spec.name}").expanduser().absolute()
        python = spec.python or ("python" if container else sys.executable)
        return cls(spec, run_dir, config_text, spec_text, python, Path.cwd())

    @property
    def job_dir(self) -> Path:
        return self.run_dir / "job"

    @property
    def config_path(self) -> Path:
        return self.job_dir / "config.toml"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def nodd_args(self, config_path: str | None = None) -> list[str]:
        return self.spec.nodd_args(config_path or str(self.config_path))

    def nodd_argv(self, config_path: str | None = None) -> list[str]:
        return [self.python, "-m", "pipeline.cli", *self.nodd_args(config_path)]

    def single_node_argv(self) -> list[str]:
        """The job on one machine: training with several processes under `torchrun --standalone`
        (a private rendezvous), anything else as it is (the local and Ray targets)."""
        if self.spec.command == "train" and self.spec.procs > 1:
            return [self.python, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={self.spec.procs}", "-m", "pipeline.cli", *self.nodd_args()]
        return self.nodd_argv()

    def write(self) -> None:
        """Everything a person (or a requeued job) needs to repeat this one, in RUN/job/."""
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text, encoding="utf-8")
        (self.job_dir / "job.toml").write_text(self.spec_text, encoding="utf-8")
        version = code_version()
        patch = version.pop("patch", "")
        (self.job_dir / "code_version.json").write_text(json.dumps(version, indent=2) + "\n", encoding="utf-8")
        if patch:
            (self.job_dir / "code.patch").write_text(patch, encoding="utf-8")


def code_version() -> dict:
    """The nodd version, and where the code is a git checkout: commit, dirty flag and the
    uncommitted diff (so an experiment can be rebuilt exactly)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        info = {"nodd": version("nodd")}
    except PackageNotFoundError:
        info = {"nodd": "unknown"}

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit:
        info["commit"] = commit.strip()
        info["dirty"] = bool((git("status", "--porcelain", "--untracked-files=no") or "").strip())
        if info["dirty"]:
            info["patch"] = git("diff", "HEAD") or ""
    return info

"""Tiny job specs for the cluster tests."""

from __future__ import annotations

from pathlib import Path

from cluster.records import list_records


def write_train_job(folder: Path, shards: Path, name: str, steps: int, procs: int = 2, **job) -> Path:
    """A tiny 2-process training job spec (and its train config) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}-train.toml"
    config.write_text(f"""
[model]
width = 32
depth = 2
heads = 4
latent_size = 8
attention = "sdpa"
[data]
shards = "{shards}"
seq_len = 256
batch_rows = 2
[optim]
warmup_steps = 2
[train]
steps = {steps}
log_every = 1
checkpoint_every = 1000
""")
    extra = "\n".join(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in job.items())
    spec = folder / f"{name}.toml"
    spec.write_text(f"""
name = "{name}"
command = "train"
config = "{config}"
run_dir = "{folder / name}"
procs_per_node = {procs}
cpus_per_node = 2
grace_seconds = 60
{extra}
""")
    return spec


ROOT = Path(__file__).resolve().parents[2]


def write_prep_job(folder: Path, tokenizer: Path, name: str, samples: int, extra: str = "") -> Path:
    """A prep job spec of `samples` built-in shapes images into folder/shards (2 shards)."""
    spec = folder / f"{name}.toml"
    spec.write_text(f"""
name = "{name}"
command = "prep"
config = "{ROOT / 'configs/prep/shapes.toml'}"
overrides = ['out_dir="{folder / 'shards'}"', 'tokenizer.path="{tokenizer}"', 'tokenizer.text="byte"', "source.limit={samples}",
             "shard_size={samples // 2}"]
run_dir = "{folder / f'{name}-run'}"
{extra}
""")
    return spec


def newest_job_id() -> str:
    return list_records()[-1].id

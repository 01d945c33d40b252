"""Tiny train configs and metric readers shared by the training tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

from core.config import load_config
from pipeline.train.config import TrainConfig


def config(run_dir, shards, **overrides):
    args = [f"run_dir={run_dir}", f"data.shards={shards}", "data.seq_len=256", "data.batch_rows=2",
            "model.width=32", "model.depth=2", "model.heads=4", "model.latent_size=8", "model.attention=sdpa",
            "optim.warmup_steps=2", "train.log_every=1", "train.checkpoint_every=3", "train.steps=6"]
    args += [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    return load_config(TrainConfig, None, args)


def losses(run_dir):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines())}


ROOT = Path(__file__).resolve().parents[2]
# `nodd train --nproc N` settings of a tiny run (what the engines' end-to-end tests train)
TINY = ["data.seq_len=256", "data.batch_rows=2", "model.width=32", "model.depth=2", "model.heads=4",
        "model.latent_size=8", "model.attention=sdpa", "optim.warmup_steps=2", "train.log_every=1",
        "train.checkpoint_every=2"]


def cli_train(run, shards, *args, nproc=2):
    """`nodd train --nproc N` under torchrun, as a user runs it: the completed process."""
    command = [sys.executable, "-m", "pipeline.cli", "train", "--nproc", str(nproc), f"run_dir={run}",
               f"data.shards={shards}", *TINY, *args]
    return subprocess.run(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=300)

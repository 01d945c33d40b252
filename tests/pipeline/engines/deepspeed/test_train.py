"""`nodd train train.engine=deepspeed`: the trainer end to end under torchrun (ZeRO-2 over two
data-parallel ranks; DeepSpeed's pipeline over two stages), exact resume, an export that
evaluates, and a checkpoint that names the layout it needs."""

import json

import pytest
import torch
from support.train_helpers import cli_train, losses

from pipeline.evaluate import evaluate
from pipeline.export import read_export


def train(run, shards, *args, nproc=2):
    return cli_train(run, shards, "train.engine=deepspeed", *args, nproc=nproc)


def resumes_exactly_and_exports(tmp_path, shards, settings):
    """Four steps straight, and two then two more after a restart: the same losses; the export
    evaluates as a plain nodd model. Returns the uninterrupted run."""
    full, part = tmp_path / "full", tmp_path / "part"
    for run, args in [(full, ["train.steps=4"]), (part, ["train.steps=2"]), (part, ["train.steps=4", "--resume"])]:
        done = train(run, shards["kl"], *settings, *args)
        assert done.returncode == 0, done.stderr[-3000:]
    assert losses(part) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]
    exports = [read_export(run / "checkpoints" / "step-000004" / "export")[0] for run in (full, part)]
    assert exports[0].keys() == exports[1].keys() and all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])
    results = evaluate(full, per_prompt=1, extra=0, images=4, steps=2)
    assert results["understanding"]["images"] == 4 and results["text"]["perplexity"] > 1
    return full


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero2_run_resumes_exactly_exports_and_names_its_layout(tmp_path, shards, precision):
    zero2 = ["parallel.dp_shard=2", "deepspeed.zero_stage=2", f"train.precision={precision}"]
    full = resumes_exactly_and_exports(tmp_path, shards, zero2)
    step4 = full / "checkpoints" / "step-000004"
    assert json.loads((step4 / "meta.json").read_text())["engine"] == "deepspeed"
    assert json.loads((step4 / "deepspeed.json").read_text()) == {"world": 2, "pp": 1, "zero_stage": 2,
                                                                      "precision": precision}
    if precision == "fp32":  # on one process: DeepSpeed's universal checkpoint (test_reshard.py)
        done = train(full, shards["kl"], "deepspeed.zero_stage=2", "train.steps=5", "--resume", nproc=1)
        assert done.returncode == 0, done.stderr[-3000:]
        assert sorted(losses(full)) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_pipeline_run_resumes_exactly_and_exports(tmp_path, shards):
    """DeepSpeed's pipeline engine, two stages (ZeRO-1), with a weight average: each stage
    checkpoints its own layers and average and exports its own names (the export is their
    union); the resumed run exports the uninterrupted run's average exactly."""
    pp2 = ["parallel.pp=2", "parallel.dp_shard=1", "deepspeed.zero_stage=1", "optim.grad_accum=2",
           "optim.ema_decay=0.9"]
    full = resumes_exactly_and_exports(tmp_path, shards, pp2)
    layout = json.loads((full / "checkpoints" / "step-000004" / "deepspeed.json").read_text())
    assert layout == {"world": 2, "pp": 2, "zero_stage": 1, "precision": "fp32"}
    done = train(full, shards["kl"], "deepspeed.zero_stage=1", "parallel.dp_shard=2", "train.steps=6", "--resume")
    assert done.returncode == 1  # the stages' files do not reshard into data parallel
    assert "another layout (pp 2 -> 1)" in done.stderr and "init_from" in done.stderr

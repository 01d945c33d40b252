"""`nodd train train.engine=megatron`: the trainer end to end under torchrun (tensor parallel,
an odd vocabulary on the split LM head), exact resume, an export that evaluates, a checkpoint that
resumes under another layout, and one that refuses another precision with a message."""

import json

import pytest
from support.train_helpers import cli_train, losses

from pipeline.evaluate import evaluate


def train(run, shards, *args, nproc=2):
    return cli_train(run, shards, "train.engine=megatron", *args, nproc=nproc)


@pytest.mark.slow
def test_tensor_parallel_run_resumes_exactly_exports_and_resumes_under_another_layout(tmp_path, shards):
    tp2 = ["parallel.tp=2", "parallel.dp_shard=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    done = train(full, shards["kl"], *tp2, "train.steps=4")
    assert done.returncode == 0, done.stderr[-3000:]
    done = train(part, shards["kl"], *tp2, "train.steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    done = train(part, shards["kl"], *tp2, "train.steps=4", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert losses(part) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]
    meta = json.loads((full / "checkpoints" / "step-000004" / "meta.json").read_text())
    assert meta["engine"] == "megatron" and meta["parallel"]["tp"] == 2

    results = evaluate(full, per_prompt=1, extra=0, images=4, steps=2)  # the export is a plain nodd model
    assert results["understanding"]["images"] == 4 and results["text"]["perplexity"] > 1

    # the same checkpoint resumes under another layout (dist_checkpointing reslices it): data
    # parallel with the distributed optimizer instead of tensor parallel
    done = train(full, shards["kl"], "parallel.dp_shard=2", "train.steps=6", "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 4" in done.stderr and sorted(losses(full)) == [1, 2, 3, 4, 5, 6]
    layout = json.loads((full / "checkpoints" / "step-000006" / "megatron.json").read_text())
    assert (layout["tp"], layout["dp"], layout["distributed_optimizer"]) == (1, 2, True)


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay", [0.0, 0.9], ids=["main weights", "their average"])
def test_bf16_with_the_distributed_optimizer_resumes_exactly_and_exports_its_fp32_main_weights(tmp_path, shards,
                                                                                              ema_decay):
    """With optim.ema_decay the export is the average of the main weights, each data-parallel rank
    averaging its slice of them, checkpointed and resumed with the payload."""
    import torch

    from pipeline.export import read_export

    bf16 = ["parallel.dp_shard=2", "train.precision=bf16", f"optim.ema_decay={ema_decay}"]
    full, part = tmp_path / "full", tmp_path / "part"
    for run, args in [(full, ["train.steps=4"]), (part, ["train.steps=2"]), (part, ["train.steps=4", "--resume"])]:
        done = train(run, shards["kl"], *bf16, *args)
        assert done.returncode == 0, done.stderr[-3000:]
    assert losses(part) == losses(full) and sorted(losses(full)) == [1, 2, 3, 4]
    layout = json.loads((full / "checkpoints" / "step-000004" / "megatron.json").read_text())
    assert layout["precision"] == "bf16" and layout["distributed_optimizer"] is True
    assert layout["weight_average"] is (ema_decay > 0)

    weights, _ = read_export(full / "checkpoints" / "step-000004" / "export")
    resumed, _ = read_export(part / "checkpoints" / "step-000004" / "export")
    assert all(torch.equal(weights[k], resumed[k]) for k in weights)
    assert {w.dtype for w in weights.values()} == {torch.float32}
    # the optimizer's main weights, not the bf16 copies the model computed with (those round them)
    assert any((w.bfloat16().float() != w).any() for w in weights.values())

    done = train(full, shards["kl"], "parallel.dp_shard=2", "train.steps=6", "--resume")
    assert done.returncode == 1 and "precision bf16 -> fp32" in done.stderr

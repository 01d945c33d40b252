"""optim.ema_decay: the weight average follows its formula, leaves training alone, is what
export/ holds, and resumes exactly (also from a checkpoint saved without one)."""

import logging

import torch
from support.train_helpers import config, losses

from pipeline.engines.ema import WeightAverage
from pipeline.export import read_export
from pipeline.train.loop import train


def test_average_follows_the_warmed_up_decay():
    layer = torch.nn.Linear(3, 2)
    average = WeightAverage(layer, decay=0.5)
    expected = [p.detach().clone() for p in layer.parameters()]
    for n in range(4):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(1.0)
        decay = min(0.5, (1 + n) / (10 + n))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in zip(expected, layer.parameters())]
        average.update()
    for got, want in zip(average.named_average().values(), expected):
        torch.testing.assert_close(got, want)
    assert int(average.updates) == 4 and average.current_decay() == 5 / 14  # still warming up


def _export(run, step):
    return read_export(run / "checkpoints" / f"step-{step:06d}" / "export")


def test_average_is_exported_leaves_training_alone_and_resumes_exactly(tmp_path, shards, caplog):
    raw, full, part = tmp_path / "raw", tmp_path / "full", tmp_path / "part"
    train(config(raw, shards["kl"]))
    train(config(full, shards["kl"], optim__ema_decay=0.9))
    assert losses(full) == losses(raw)
    averaged, meta = _export(full, 6)
    plain, _ = _export(raw, 6)
    assert meta["ema_decay"] == 0.9
    assert averaged.keys() == plain.keys()
    assert any(not torch.equal(averaged[k], plain[k]) for k in plain)

    train(config(part, shards["kl"], train__steps=3, optim__ema_decay=0.9))
    train(config(part, shards["kl"], optim__ema_decay=0.9), resume=True)
    resumed, _ = _export(part, 6)
    assert all(torch.equal(resumed[k], averaged[k]) for k in averaged)

    # a checkpoint without an average: resume starts one from its weights, and says so
    with caplog.at_level(logging.WARNING):
        train(config(raw, shards["kl"], train__steps=8, optim__ema_decay=0.9), resume=True)
    assert "holds no weight average" in caplog.text
    assert sorted(losses(raw))[-1] == 8

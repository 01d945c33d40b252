"""optim.ema_decay under the megatron engine: the average of the optimizer's fp32 main weights is
what the export holds, the same average the native engine keeps, checkpointed with the payload."""

import logging

import torch
from support.parity import LR, MICRO, batches, seed_of, train_config

from pipeline.distributed import DistInfo
from pipeline.engines.megatron.engine import MegatronEngine
from pipeline.engines.native.engine import NativeEngine

ONE = DistInfo(0, 1, torch.device("cpu"))


def trained(engine, first, last):
    data = batches(engine.cfg.model, 0, last)
    for s in range(first, last):
        engine.train_step(data[s], [seed_of(s, m, 0) for m in range(MICRO)], LR)
    return engine


def averaged(engine_class, decay, steps=3):
    cfg = train_config("transfusion", {}, "megatron" if engine_class is MegatronEngine else "native")
    cfg.optim.ema_decay = decay
    return trained(engine_class(cfg, ONE), 0, steps)


def test_the_export_is_the_average_the_native_engine_keeps(megatron_one_process):
    megatron = averaged(MegatronEngine, 0.9).export_state_dict()
    native = averaged(NativeEngine, 0.9).export_state_dict()
    raw = averaged(MegatronEngine, 0.0).export_state_dict()
    assert megatron.keys() == native.keys()
    for k in native:
        torch.testing.assert_close(megatron[k], native[k], atol=1e-5, rtol=1e-4)
    assert any((megatron[k] - raw[k]).abs().max() > 1e-4 for k in raw)


def test_the_average_is_checkpointed_and_restarts_from_a_payload_without_one(megatron_one_process, tmp_path, caplog):
    for name in ("with", "without"):
        (tmp_path / name).mkdir()  # the trainer's Checkpointer makes the folder
    engine = averaged(MegatronEngine, 0.9, steps=2)
    engine.save(tmp_path / "with")
    resumed = averaged(MegatronEngine, 0.9, steps=0)
    resumed.load(tmp_path / "with")
    trained(engine, 2, 3), trained(resumed, 2, 3)
    assert all(torch.equal(a, b) for a, b in zip(resumed.average.average, engine.average.average))
    assert int(resumed.average.updates) == 3

    averaged(MegatronEngine, 0.0, steps=2).save(tmp_path / "without")
    late = averaged(MegatronEngine, 0.9, steps=0)
    with caplog.at_level(logging.WARNING):
        late.load(tmp_path / "without")
    assert "holds no weight average" in caplog.text and int(late.average.updates) == 0
    assert all(torch.equal(a, q) for a, q in zip(late.average.average, late.average.params))

"""The native engine's layouts match a one-process run step for step (gloo, CPU, tiny model)."""

import dataclasses
import json
import socket

import pytest
import torch.multiprocessing as mp
from support.parity import reference_losses, tiny_cfg, worker

from core.errors import ConfigError
from pipeline.engines.native.parallel import ParallelConfig

STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FOUR_PROCESS = {"tp2 x dp2", "pp2 x dp2"}  # one mode each: 4 processes are slow on 2 cores


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["transfusion", "mar"])
@pytest.mark.parametrize("name, layout, world", [
    ("tp2", {"tp": 2, "dp_shard": 1}, 2),
    ("fsdp2", {"dp_shard": 2}, 2),
    ("hsdp", {"dp_replicate": 2, "dp_shard": 1}, 2),
    ("pp2 1f1b", {"pp": 2, "dp_shard": 1}, 2),
    ("pp2 gpipe", {"pp": 2, "dp_shard": 1, "pp_schedule": "gpipe"}, 2),
    ("tp2 x dp2", {"tp": 2, "dp_shard": 2}, 4),
    ("pp2 x dp2", {"pp": 2, "dp_shard": 2}, 4),
])
def test_layout_matches_one_process(name, layout, world, mode, tmp_path):
    if mode == "mar" and (name in FOUR_PROCESS or name == "pp2 gpipe"):
        pytest.skip("covered in transfusion mode; keeps the suite short on 2 cores")
    out = tmp_path / "losses.json"
    mp.spawn(worker, args=(world, layout, STEPS, mode, free_port(), str(out)), nprocs=world, join=True)
    got = json.loads(out.read_text())
    expected = reference_losses(layout, world, STEPS, mode)
    assert len(got) == STEPS
    assert got[-1] < got[0]  # same batches and noise every step: it trains
    for a, b in zip(got, expected):
        assert abs(a - b) < 1e-5, (got, expected)


def test_parallel_config_is_checked_up_front():
    assert ParallelConfig(tp=2).resolved(8).dp_shard == 4
    with pytest.raises(ConfigError, match="do not match the world size"):
        ParallelConfig(dp_shard=3, tp=2).resolved(4)
    with pytest.raises(ConfigError, match="not divisible"):
        ParallelConfig(tp=3).resolved(4)
    with pytest.raises(ConfigError, match="head groups"):
        ParallelConfig(tp=4).check_model(tiny_cfg())
    with pytest.raises(ConfigError, match="model.depth"):
        ParallelConfig(pp=3).check_model(tiny_cfg())
    with pytest.raises(ConfigError, match="grad_accum >= 2"):
        ParallelConfig(pp=2).check_model(tiny_cfg(), microbatches=1)
    ParallelConfig(pp=2, pp_schedule="gpipe").check_model(tiny_cfg(), microbatches=1)
    with pytest.raises(ConfigError, match="tie_embeddings"):
        ParallelConfig(pp=2).check_model(dataclasses.replace(tiny_cfg(), tie_embeddings=True), microbatches=2)
    with pytest.raises(ConfigError, match="pp_schedule"):
        ParallelConfig(pp_schedule="zb").resolved(1)

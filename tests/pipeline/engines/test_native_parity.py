"""The native engine's layouts match a one-process run step for step (gloo, CPU, tiny model)."""

import json
import socket

import pytest
import torch.multiprocessing as mp

from pipeline.engines.native.parallel import ParallelConfig
from pipeline.errors import ConfigError
from support.parity import reference_losses, tiny_cfg, worker

STEPS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["transfusion", "mar"])
@pytest.mark.parametrize("layout, world", [
    ({"tp": 2, "dp_shard": 1}, 2),
    ({"dp_shard": 2}, 2),
    ({"tp": 2, "dp_shard": 2}, 4),
    ({"dp_replicate": 2, "dp_shard": 1}, 2),
])
def test_layout_matches_one_process(layout, world, mode, tmp_path):
    if mode == "mar" and world == 4:
        pytest.skip("one 4-process layout is enough per suite run on 2 cores")
    out = tmp_path / "losses.json"
    mp.spawn(worker, args=(world, layout, STEPS, mode, free_port(), str(out)), nprocs=world, join=True)
    got = json.loads(out.read_text())
    expected = reference_losses(layout, world, STEPS, mode)
    assert len(got) == STEPS
    assert got[-1] < got[0] or mode == "mar"  # it trains
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

"""train.engine=deepspeed refuses what it cannot run before any process starts, in one line."""

import pytest
from support.parity import with_settings

from core.errors import ConfigError
from pipeline.engines.base import check_layout


def deepspeed(layout=None, **settings):
    return with_settings("deepspeed", layout, **settings)


@pytest.mark.parametrize("layout, world, settings, message", [
    ({"tp": 2, "dp_shard": 1}, 2, {}, "no tensor parallelism"),
    ({"pp": 2, "dp_shard": 1}, 2, {}, "allows ZeRO stage 1 at most"),  # the default zero_stage is 2
    ({"pp": 2, "dp_shard": 1}, 2, {"deepspeed__zero_stage": 3}, "allows ZeRO stage 1 at most"),
    ({"pp": 2, "dp_shard": 1, "pp_schedule": "gpipe"}, 2, {"deepspeed__zero_stage": 1}, "its own 1F1B"),
    ({"pp": 2, "dp_shard": -1}, 3, {"deepspeed__zero_stage": 1}, "not divisible"),
    ({}, 1, {"train__compile": True}, "compile is not implemented"),
])
def test_what_it_cannot_run_is_refused(layout, world, settings, message):
    with pytest.raises(ConfigError, match=message):
        check_layout(deepspeed(layout, **settings), world)


def test_its_section_is_checked():
    cfg = deepspeed(deepspeed__zero_stage=4)
    with pytest.raises(ConfigError, match="zero_stage must be 1, 2 or 3"):
        cfg.deepspeed.validate()
    with pytest.raises(ConfigError, match="offload_params=true needs deepspeed.zero_stage=3"):
        deepspeed(deepspeed__zero_stage=2, deepspeed__offload_params=True).deepspeed.validate()
    check_layout(deepspeed({"dp_shard": 2}, deepspeed__zero_stage=1), 2)
    check_layout(deepspeed({"pp": 2, "dp_shard": 2}, deepspeed__zero_stage=1), 4)


def test_offload_without_the_op_it_needs_is_refused(monkeypatch):
    from pipeline.engines.deepspeed import engine

    monkeypatch.setattr(engine, "_cpu_adam_builds", lambda: False)
    with pytest.raises(ConfigError, match="needs DeepSpeed's CPU Adam op"):
        check_layout(deepspeed({"dp_shard": 2}, deepspeed__offload_optimizer=True), 2)

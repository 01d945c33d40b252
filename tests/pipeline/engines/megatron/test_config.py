"""train.engine=megatron refuses what it cannot run before any process starts, in one line."""

import dataclasses

import pytest
from support.parity import tiny_cfg, with_settings

from core.errors import ConfigError
from pipeline.engines.base import check_layout


def megatron(layout=None, **settings):
    return with_settings("megatron", layout, **settings)


@pytest.mark.parametrize("layout, world, message", [
    ({"tp": 4, "dp_shard": 1}, 4, "head groups"),  # 2 kv heads
    ({"pp": 3, "dp_shard": 1}, 3, "model.depth"),
    ({"pp": 2, "dp_shard": 1, "pp_schedule": "gpipe"}, 2, "1F1B"),
])
def test_layouts_it_cannot_run_are_refused(layout, world, message):
    with pytest.raises(ConfigError, match=message):
        check_layout(megatron(layout), world)


def test_settings_it_does_not_implement_are_refused_not_ignored():
    for setting, key, value in [("compile", "train__compile", True)]:
        with pytest.raises(ConfigError, match=setting):
            check_layout(megatron(**{key: value}), 1)


def test_a_tied_head_cannot_be_split_by_vocabulary():
    cfg = megatron({"tp": 2, "dp_shard": 1})
    cfg.model = dataclasses.replace(tiny_cfg(), tie_embeddings=True)
    with pytest.raises(ConfigError, match="tie_embeddings"):
        check_layout(cfg, 2)
    check_layout(megatron({"tp": 2, "dp_shard": 1}), 2)  # an odd vocabulary is fine: the head pads it


@pytest.mark.parametrize("layout, world, settings, message", [
    ({}, 1, {}, "needs parallel.pp > 1"),
    ({"pp": 2, "dp_shard": 1}, 2, {}, r"model.depth=2 is not divisible by parallel.pp \* megatron.virtual_stages = 4"),
    ({"pp": 2, "dp_shard": 1}, 2, {"model__depth": 4, "optim__grad_accum": 3}, "multiple of it"),
])
def test_interleaved_stages_it_cannot_cut_are_refused(layout, world, settings, message):
    cfg = megatron(layout, megatron__virtual_stages=2, **settings)
    with pytest.raises(ConfigError, match=message):
        check_layout(cfg, world)
    cfg.megatron.virtual_stages = 0
    with pytest.raises(ConfigError, match="virtual_stages must be >= 1"):
        cfg.megatron.validate()


def test_transformer_engine_attention_is_refused_where_it_is_not_installed(megatron_one_process):
    import torch

    from pipeline.distributed import DistInfo
    from pipeline.engines.megatron.engine import MegatronEngine

    cfg = megatron()
    cfg.megatron.core_attention = "te"
    check_layout(cfg, 1)  # a login node without TE may submit it: the training node decides
    with pytest.raises(ConfigError, match="needs NVIDIA Transformer Engine and a GPU"):
        MegatronEngine(cfg, DistInfo(0, 1, torch.device("cpu")))

"""train.freeze: the named parameters keep their values, the optimizer holds the others only,
a resumed run repeats the uninterrupted one, and bad patterns fail before anything runs."""

import pytest
import torch
from support.parity import LR, MICRO, batches, seed_of, train_config
from support.train_helpers import config, losses

from core.config import load_config
from core.errors import ConfigError
from pipeline.distributed import DistInfo
from pipeline.engines.native.engine import NativeEngine
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train


def test_frozen_parameters_keep_their_values_and_stay_out_of_the_optimizer():
    cfg = train_config("transfusion", {}, settings={"train.freeze": ["backbone.layers.0", "tok_embeddings"]})
    engine = NativeEngine(cfg, DistInfo(0, 1, torch.device("cpu")))
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    data = batches(cfg.model, 0, 2)
    for step in range(2):
        engine.train_step(data[step], [seed_of(step, m, 0) for m in range(MICRO)], LR)
    after = engine.model.state_dict()
    frozen = {k for k in before if k.startswith(("backbone.layers.0.", "tok_embeddings."))}
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in before if k not in frozen and "norm" not in k
               and k.startswith(("backbone", "lm_head", "latent")))
    held = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    named = dict(engine.model.named_parameters())
    assert held == {id(p) for k, p in named.items() if k not in frozen}


@pytest.mark.parametrize("patterns, words", [
    (["backbon"], "matches no parameter"),
    (["*"], "freezes every parameter"),
    ([""], "non-empty"),
])
def test_bad_patterns_fail_when_the_config_loads(patterns, words):
    with pytest.raises(ConfigError, match=words):
        load_config(TrainConfig, None, ["model.width=32", "model.heads=4", f"train.freeze={patterns}"])


def test_resume_with_frozen_parameters_repeats_the_run_and_needs_the_same_list(tmp_path, shards):
    frozen = {"train__freeze": '["backbone"]'}
    full, part = tmp_path / "full", tmp_path / "part"
    train(config(full, shards["kl"], **frozen))
    train(config(part, shards["kl"], train__steps=3, **frozen))
    with pytest.raises(ConfigError, match=r"train.freeze=\['backbone'\], this run asks for \[\]"):
        train(config(part, shards["kl"]), resume=True)
    train(config(part, shards["kl"], **frozen), resume=True)
    assert losses(part) == losses(full)

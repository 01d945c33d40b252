"""The native engine builds on the meta device and still starts from the weights a model built
on the CPU and `init_weights()`-ed starts from (so runs made before meta builds keep their
numbers); the export and the in-run model hold the engine's weights."""

import dataclasses

import pytest
import torch

from model.multimodal import MultimodalModel
from pipeline.distributed import DistInfo
from pipeline.engines.native.engine import NativeEngine
from support.parity import train_config

ONE_PROCESS = DistInfo(0, 1, torch.device("cpu"))


@pytest.mark.parametrize("mode, options", [
    ("transfusion", {"patch_positions": True}),
    ("transfusion", {"conv_adapter": True, "adapter_channels": 8}),
    ("mar", {"mar_order": "random", "head_depth": 2}),
    ("discrete", {"tie_embeddings": True}),
])
def test_meta_build_gives_the_weights_of_a_cpu_build(mode, options):
    cfg = train_config(mode, {})
    cfg.model = dataclasses.replace(cfg.model, **options)
    cfg.train.seed = 7
    torch.manual_seed(7)
    reference = MultimodalModel(cfg.model)
    reference.init_weights()
    engine = NativeEngine(cfg, ONE_PROCESS)
    got, expected = engine.model.state_dict(), reference.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), [k for k in expected if not torch.equal(got[k], expected[k])]
    if cfg.model.tie_embeddings:
        assert engine.model.lm_head.weight is engine.model.tok_embeddings.weight


def test_export_and_eval_model_hold_the_trained_weights():
    from support.parity import LR, MICRO, batches, seed_of

    cfg = train_config("transfusion", {})
    engine = NativeEngine(cfg, ONE_PROCESS)
    engine.train_step(batches(cfg.model, 0, 1)[0], [seed_of(0, m, 0) for m in range(MICRO)], LR)
    exported = engine.export_state_dict()
    trained = dict(engine.model.named_parameters())
    assert exported.keys() == trained.keys()
    assert all(torch.equal(exported[k], trained[k].detach()) for k in trained)
    copy = engine.eval_model()
    assert copy is not engine.model
    assert all(torch.equal(copy.state_dict()[k], v) for k, v in exported.items())


@pytest.mark.parametrize("family, options", [("llama", {}), ("qwen3", {"head_dim": 24, "tie_word_embeddings": True})])
def test_meta_build_from_an_llm_gives_the_weights_of_a_cpu_build(family, options, tmp_path):
    """model.init_from through the meta build (materialise lays the LLM over the plan's draws)
    equals a CPU build with the LLM loaded into it: the LLM's tensors, the rest the seed's."""
    pytest.importorskip("transformers")
    from model.pretrained import PretrainedLLM
    from support.llm_helpers import save_tiny_llm

    llm = save_tiny_llm(tmp_path / family, family, **options)
    cfg = train_config("transfusion", {}, model_options={"init_from": str(llm)})
    torch.manual_seed(cfg.train.seed)
    reference = MultimodalModel(cfg.model)
    reference.init_weights()
    fresh = {k: v.clone() for k, v in reference.state_dict().items()}
    PretrainedLLM(llm).load_into(reference)
    got, expected = NativeEngine(cfg, ONE_PROCESS).model.state_dict(), reference.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected), [k for k in expected if not torch.equal(got[k], expected[k])]
    changed = {k for k in expected if not torch.equal(fresh[k], expected[k])}
    assert "backbone.layers.1.attention.wqkv.weight" in changed and "latent_in.proj.weight" not in changed

"""model.init_from: a Hugging Face LLM's weights in nodd's model give that LLM's logits."""

import json

import pytest
import torch

from core.errors import ConfigError
from model.config import ModelConfig
from model.multimodal import MultimodalModel
from model.pretrained import PretrainedLLM
from support.llm_helpers import save_tiny_llm

pytest.importorskip("transformers")

# qwen3: qk-norm, tied embeddings, a head width that is not width / heads (as in Qwen3-0.6B)
VARIANTS = {"llama": ("llama", {}), "mistral": ("mistral", {"sliding_window": None}),
            "qwen3": ("qwen3", {"head_dim": 24, "tie_word_embeddings": True})}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def llm(request, tmp_path_factory):
    family, options = VARIANTS[request.param]
    return save_tiny_llm(tmp_path_factory.mktemp(request.param), family, **options)


def started_model(folder, **fields) -> MultimodalModel:
    torch.manual_seed(0)
    model = MultimodalModel(ModelConfig(init_from=str(folder), attention="sdpa", **fields))
    model.init_weights()
    PretrainedLLM(folder).load_into(model)
    return model


@pytest.mark.parametrize("mode", ["transfusion", "mar", "discrete"])
def test_text_logits_equal_transformers(llm, mode):
    from transformers import AutoModelForCausalLM

    extra = {"codebook_size": 16, "patch_size": 1} if mode == "discrete" else {}
    model = started_model(llm, mode=mode, **extra).eval()
    reference = AutoModelForCausalLM.from_pretrained(llm).eval()
    ids = torch.randint(0, 259, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.text_logits(ids), reference(ids).logits
    assert theirs.std() > 0.3  # logits far from uniform: a wrong rotary pairing would show
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-4)
    # the parts the LLM lacks start fresh: image ids and codes past its vocabulary
    assert model.tok_embeddings.weight[259:].abs().sum() > 0


def test_shapes_come_from_the_checkpoint(tmp_path):
    folder = save_tiny_llm(tmp_path / "q", "qwen3", head_dim=24, num_hidden_layers=3)
    cfg = ModelConfig(init_from=str(folder), depth=3)  # agreeing with it is fine
    cfg.validate()
    assert (cfg.width, cfg.depth, cfg.heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden) == (64, 3, 4, 2, 24, 96)
    assert (cfg.qk_norm, cfg.rope_theta, cfg.norm_eps, cfg.text_vocab_size) == (True, 500.0, 1e-6, 259)
    llama = ModelConfig(init_from=str(save_tiny_llm(tmp_path / "l", "llama")))
    llama.validate()
    assert llama.qk_norm is False and llama.attention_head_dim == 0 and llama.head_dim == 16


def test_a_contradicting_config_names_both_values(tmp_path):
    folder = save_tiny_llm(tmp_path / "l", "llama")
    with pytest.raises(ConfigError, match=r"model.width=128 contradicts .* gives 64"):
        ModelConfig(init_from=str(folder), width=128).validate()


@pytest.mark.parametrize("change, words", [
    ({"attention_bias": True}, "attention_bias"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "RoPE scaling"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "gpt2"}, "not supported"),
])
def test_architectures_nodd_cannot_express_are_refused(tmp_path, change, words):
    folder = save_tiny_llm(tmp_path / "l", "llama")
    config = json.loads((folder / "config.json").read_text()) | change
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=words):
        ModelConfig(init_from=str(folder)).validate()


def test_mistral_sliding_window_is_refused(tmp_path):
    folder = save_tiny_llm(tmp_path / "m", "mistral", sliding_window=16)
    with pytest.raises(ConfigError, match="sliding_window=16"):
        ModelConfig(init_from=str(folder)).validate()


def test_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig(init_from=str(tmp_path)).validate()
    folder = save_tiny_llm(tmp_path / "l", "llama")
    for file in folder.glob("*.safetensors"):
        file.unlink()
    cfg = ModelConfig(init_from=str(folder))
    cfg.validate()  # the shapes need config.json only
    with pytest.raises(ConfigError, match="no \\*.safetensors"):
        started_model(folder)


def test_sharded_checkpoints_are_read(tmp_path):
    """A checkpoint split over several files (model.safetensors.index.json) loads the same."""
    from transformers import AutoModelForCausalLM

    whole = save_tiny_llm(tmp_path / "whole", "llama")
    AutoModelForCausalLM.from_pretrained(whole).save_pretrained(tmp_path / "split", max_shard_size="100KB")
    assert (tmp_path / "split" / "model.safetensors.index.json").is_file()
    a, b = started_model(whole).state_dict(), started_model(tmp_path / "split").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

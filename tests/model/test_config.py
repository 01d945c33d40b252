import pytest

from core.config import load_config
from core.errors import ConfigError
from model.config import ModelConfig


@pytest.mark.parametrize("overrides, message", [
    (["width=250", "heads=4"], "not divisible by model.heads"),
    (["heads=4", "kv_heads=3"], "must divide model.heads"),
    (["width=16", "heads=4"], "must be even and >= 6"),
    (["latent_size=8", "patch_size=3"], "does not divide the latent grid"),
    (["mode=transfusion", "attention=flash"], "bidirectionally inside each image"),
    (["mode=discrete"], "needs model.codebook_size"),
    (["mode=discrete", "codebook_size=16", "patch_size=2"], "patch_size=1"),
    (["mode=mar", "conv_adapter=true"], "transfusion-only"),
    (["attention=fast"], "auto"),
    (["adapter_channels=12", "conv_adapter=true"], "multiple of 8"),
])
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ModelConfig, None, overrides)


def test_derived_sizes():
    cfg = load_config(ModelConfig, None, ["mode=discrete", "codebook_size=1000", "text_vocab_size=259"])
    assert (cfg.boi_id, cfg.eoi_id, cfg.code_offset, cfg.vocab_size) == (259, 260, 261, 1261)
    assert cfg.hidden % 64 == 0 and cfg.hidden >= 8 * cfg.width // 3
    assert load_config(ModelConfig, None, ["latent_channels=4", "patch_size=2"]).patch_dim == 16

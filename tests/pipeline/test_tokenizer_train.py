"""`nodd tokenizer train` on real sources: outputs, metrics, information budget, BPE."""

import json

import pytest

from core.config import load_config
from model.tokenizers import load_text_tokenizer, load_tokenizer, tokenizer_fingerprint
from pipeline.tokenizer_train import TokenizerTrainConfig, train_tokenizer

TINY = ["steps=30", "batch_size=16", "net.channels=8", "eval_images=16"]


@pytest.mark.parametrize("kind", ["kl", "vq", "fsq"])
def test_image_tokenizer_outputs(tmp_path, kind):
    cfg = load_config(TokenizerTrainConfig, None, [f"kind={kind}", "source.limit=96", f"out_dir={tmp_path}", *TINY])
    result = train_tokenizer(cfg)
    for name in ("tokenizer.safetensors", "tokenizer_config.json", "fingerprint.txt", "metrics.json",
                 "reconstructions.png", "train_config.toml"):
        assert (tmp_path / name).is_file(), name
    assert result["fingerprint"] == tokenizer_fingerprint(tmp_path)
    assert load_tokenizer(tmp_path).config.kind == kind
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["psnr"] > 5 and metrics["eval_images"] == 9  # 10% of 96 held out
    budget = metrics["info_budget"]
    if kind == "kl":
        assert budget["latent_shape"] == [4, 8, 8] and budget["values"] == 256
    else:
        vocab = 512 if kind == "vq" else 1000
        assert budget["tokens"] == 64 and budget["vocab"] == vocab
        assert 0 < metrics["codebook_utilisation"] <= 1


def test_trains_on_video_frames(tmp_path):
    cfg = load_config(TokenizerTrainConfig, None, ["source.kind=moving_shapes", "source.limit=4", f"out_dir={tmp_path}",
                                                   "video.num_frames=8", *TINY])
    result = train_tokenizer(cfg)
    assert result["train_images"] + result["eval_images"] == 32  # 4 clips x 8 frames


def test_bpe_on_captions(tmp_path):
    cfg = load_config(TokenizerTrainConfig, None, ["kind=bpe", "source.limit=500", "bpe_vocab_size=400",
                                                   f"out_dir={tmp_path}"])
    result = train_tokenizer(cfg)
    tok = load_text_tokenizer(str(tmp_path / "tokenizer.json"))
    assert tok.decode(tok.encode("a red circle left of a blue square")) == "a red circle left of a blue square"
    assert result["bytes_per_token"] > 2  # the captions' vocabulary compresses well


def test_net_section_is_validated(tmp_path):
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="downsample"):
        load_config(TokenizerTrainConfig, None, ["net.downsample=3"])
    with pytest.raises(ConfigError, match="unknown key 'net.width'"):
        load_config(TokenizerTrainConfig, None, ["net.width=3"])

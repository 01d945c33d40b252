"""`nodd train` from a pretrained LLM (model.init_from): trains, samples and exports without the
LLM folder afterwards; its larger, padded vocabulary takes a smaller tokenizer."""

import json
import shutil

import numpy as np
import pytest
from support.llm_helpers import save_tiny_llm
from support.train_helpers import config, losses

from core.errors import DataError
from pipeline.inference import caption_images, export, load_run, sample_images
from pipeline.train.loop import train

pytest.importorskip("transformers")

# the tiny train config's backbone (width 32, depth 2, 4 heads); 300 embedding rows for the
# byte tokenizer's 259 ids, padded like Qwen's
TINY_LLM = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=300)


def test_train_from_an_llm_then_sample_and_export_without_it(tmp_path, shards):
    llm = save_tiny_llm(tmp_path / "llm", "qwen3", **TINY_LLM)
    run = tmp_path / "run"
    result = train(config(run, shards["kl"], model__init_from=str(llm), train__steps=8, optim__lr=3e-3))
    assert result["step"] == 8
    curve = losses(run)
    assert curve[8] < curve[1], curve
    saved = (run / "train_config.toml").read_text()
    assert "text_vocab_size = 300" in saved and "qk_norm = true" in saved  # the LLM's shapes, resolved
    shutil.rmtree(llm)  # the run holds everything it needs
    loaded = load_run(run)
    images = sample_images(loaded, "a red circle", 2, steps=2, cfg_scale=None, seed=0)
    assert images.shape[0] == 2
    assert len(caption_images(loaded, np.asarray(images), max_tokens=4)) == 2
    meta = json.loads((export(run, tmp_path / "export") / "model.json").read_text())
    assert meta["model"]["init_from"] == "" and meta["started_from_llm"] == str(llm)


def test_a_tokenizer_larger_than_the_llm_vocabulary_is_refused(tmp_path, shards):
    llm = save_tiny_llm(tmp_path / "llm", "llama", **TINY_LLM | {"vocab_size": 200})
    with pytest.raises(DataError, match="more than the 200 rows"):
        train(config(tmp_path / "run", shards["kl"], model__init_from=str(llm), train__steps=1))

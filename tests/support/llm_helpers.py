"""Tiny randomly initialised Hugging Face LLMs written by `transformers`' own save_pretrained:
the artefacts model.init_from reads (transformers is a test dependency only)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = {  # family -> (config class, model class) names in transformers
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
}


def save_tiny_llm(folder: Path, family: str, seed: int = 0, **options) -> Path:
    """A 2-layer LLM of `family` (GQA 4 query / 2 key-value heads, width 64, vocabulary 259: the
    shapes of the parity tests' tiny model) with `options` over them; weights drawn with a larger
    std than usual so that any channel mixed up changes the logits visibly."""
    import transformers

    config_cls, model_cls = (getattr(transformers, name) for name in FAMILIES[family])
    settings = dict(vocab_size=259, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.15, rms_norm_eps=1e-6,
                    tie_word_embeddings=False, rope_theta=500.0) | options
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings)).eval()
    with torch.no_grad():  # norms start at 1: random gains show a misplaced qk-norm channel too
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder

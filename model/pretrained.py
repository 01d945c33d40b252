"""Start the backbone from a pretrained LLM: a local Hugging Face folder of the Llama family
(Llama, Mistral) or Qwen3 (`model.init_from`).

    llm = PretrainedLLM("checkpoints/Qwen3-0.6B")   # config.json + *.safetensors, never downloaded
    llm.apply_shapes(cfg)                           # width, depth, heads, ... from config.json
    llm.load_into(model)                            # backbone, text embeddings, LM head

What nodd's model has and the LLM has not (image begin/end ids and codes past the LLM's
vocabulary, latent adapters, time and level embeddings, flow and MAR heads) keeps its fresh
initialisation; the text row of the modality embedding starts at zero, so a text-only input
gives the LLM's own logits. An architecture nodd cannot express (biases, RoPE scaling, sliding
windows, another activation) is refused with a ConfigError, never approximated.

Two layout conversions, both exact:
  - rotary pairs: Hugging Face rotates half-split channels (j, j + d/2) ("rotate_half"), nodd
    adjacent ones (2j, 2j+1) (model/rope.py), so each head's query and key rows (and qk-norm
    weights) are interleaved; q.k is unchanged because both sides move alike. Text positions are
    equal on nodd's three rotary axes, where its M-RoPE is exactly 1-D RoPE with the same
    frequencies theta^(-j / (d/2)).
  - q, k and v are fused into one projection grouped per key/value head (model/transformer.py).

Tensors are read one at a time from the safetensors files (sharded checkpoints included), so a
rank never holds the whole LLM twice.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from core.errors import ConfigError, DataError

# model_type -> whether its attention has per-head RMSNorm on queries and keys
FAMILIES = {"llama": False, "mistral": False, "qwen3": True}


class PretrainedLLM:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        config = self.folder / "config.json"
        if not config.is_file():
            raise ConfigError(f"model.init_from={folder}: no config.json there; point it at a local Hugging Face "
                              "checkpoint folder (config.json + *.safetensors; nodd never downloads one)")
        try:
            self.hf = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model.init_from={folder}: config.json is not valid JSON ({exc})") from None
        self._refuse_unsupported()
        self._files: dict[str, Path] | None = None  # read when weights are: validate() needs only config.json

    # ---- the architecture ---------------------------------------------------------------------
    def _refuse_unsupported(self) -> None:
        hf, where = self.hf, f"model.init_from={self.folder}"
        kind = hf.get("model_type")
        if kind not in FAMILIES:
            raise ConfigError(f"{where}: model_type {kind!r} is not supported; nodd starts from "
                              f"{', '.join(FAMILIES)} checkpoints")
        problems = []
        if hf.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act={hf['hidden_act']!r} (nodd's MLP is SwiGLU)")
        for key in ("attention_bias", "mlp_bias"):
            if hf.get(key):
                problems.append(f"{key}=true (nodd's projections have no biases)")
        rope = hf.get("rope_parameters") or {}
        if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            problems.append(f"RoPE scaling {hf.get('rope_scaling') or rope} (nodd implements plain RoPE)")
        if hf.get("partial_rotary_factor", 1.0) != 1.0:
            problems.append(f"partial_rotary_factor={hf['partial_rotary_factor']}")
        if (hf.get("sliding_window") is not None and kind == "mistral") or hf.get("use_sliding_window"):
            problems.append(f"sliding_window={hf.get('sliding_window')} (nodd attends to the whole document)")
        if any(t != "full_attention" for t in hf.get("layer_types") or []):
            problems.append(f"layer_types {sorted(set(hf['layer_types']))}")
        if problems:
            raise ConfigError(f"{where}: nodd cannot express this checkpoint's {'; '.join(problems)}; "
                              "start from a checkpoint without them")

    def model_fields(self) -> dict[str, object]:
        """The ModelConfig fields the checkpoint fixes."""
        hf = self.hf
        width, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        head_dim = int(hf.get("head_dim") or width // heads)
        rope = hf.get("rope_parameters") or {}
        return {"width": width, "depth": int(hf["num_hidden_layers"]), "heads": heads,
                "kv_heads": int(hf.get("num_key_value_heads") or heads),
                "attention_head_dim": 0 if head_dim * heads == width else head_dim,
                "mlp_hidden": int(hf["intermediate_size"]), "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
                "rope_theta": float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                "qk_norm": FAMILIES[hf["model_type"]], "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
                "text_vocab_size": int(hf["vocab_size"])}

    def apply_shapes(self, cfg) -> None:
        """Set `cfg`'s (a ModelConfig) shape fields from config.json. A field the user set to
        something else than both its default and the checkpoint's value is a ConfigError."""
        defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
        for name, value in self.model_fields().items():
            current = getattr(cfg, name)
            if current == value:
                continue
            if current != defaults[name]:
                raise ConfigError(f"model.{name}={current} contradicts model.init_from={self.folder}, whose "
                                  f"config.json gives {value}; remove model.{name} from the config or set it to {value}")
            setattr(cfg, name, value)

    # ---- the weights --------------------------------------------------------------------------
    def _weight_files(self) -> dict[str, Path]:
        """Each Hugging Face tensor name -> the safetensors file holding it."""
        from safetensors import safe_open

        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            return {name: self.folder / file for name, file in weight_map.items()}
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"model.init_from={self.folder}: no *.safetensors there (a PyTorch .bin checkpoint "
                              "is not read: it is a pickle; convert it with transformers' save_pretrained)")
        out = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                out.update({name: file for name in f.keys()})
        return out

    def _read(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if self._files is None:
            self._files = self._weight_files()
        if name not in self._files:
            raise DataError(f"model.init_from={self.folder}: the checkpoint lacks {name}; is it complete?")
        with safe_open(str(self._files[name]), framework="pt") as f:
            return f.get_tensor(name)

    def names(self, cfg) -> list[str]:
        """nodd parameter names this checkpoint provides (all or their first rows)."""
        layer = ["attention.wqkv", "attention.wo", "attention_norm", "ffn_norm", "ffn.w1", "ffn.w2", "ffn.w3"]
        if cfg.qk_norm:
            layer += ["attention.q_norm", "attention.k_norm"]
        out = ["tok_embeddings.weight", "modality_embeddings.weight", "backbone.norm.weight"]
        out += [f"backbone.layers.{i}.{part}.weight" for i in range(cfg.depth) for part in layer]
        return out + ([] if cfg.tie_embeddings else ["lm_head.weight"])

    def tensor(self, name: str, cfg) -> torch.Tensor:
        """The value of nodd parameter `name` (one of `names(cfg)`); for the embedding and LM head
        only the LLM's rows, the first rows of nodd's (overlay())."""
        if name == "modality_embeddings.weight":
            return torch.zeros(1, cfg.width)  # row 0, model.batch.TEXT: text inputs are the LLM's own
        if name == "tok_embeddings.weight":
            return self._read("model.embed_tokens.weight")
        if name == "lm_head.weight":
            return self._read("lm_head.weight")
        if name == "backbone.norm.weight":
            return self._read("model.norm.weight")
        _, _, i, *part = name.split(".")
        hf = f"model.layers.{i}."
        part = ".".join(part[:-1])
        simple = {"attention.wo": "self_attn.o_proj", "attention_norm": "input_layernorm",
                  "ffn_norm": "post_attention_layernorm", "ffn.w1": "mlp.gate_proj", "ffn.w3": "mlp.up_proj",
                  "ffn.w2": "mlp.down_proj"}
        if part in simple:
            return self._read(hf + simple[part] + ".weight")
        if part in ("attention.q_norm", "attention.k_norm"):
            return self._read(hf + f"self_attn.{part[-6:]}.weight")[interleaved(cfg.head_dim)]
        return fused_qkv(*(self._read(hf + f"self_attn.{p}_proj.weight") for p in "qkv"), cfg)

    @torch.no_grad()
    def load_into(self, model: nn.Module) -> None:
        """Overwrite `model`'s (a MultimodalModel on a real device, its other parameters already
        initialised) pretrained parameters; a pipeline stage fills the ones it holds."""
        params = dict(model.named_parameters())
        for name in self.names(model.cfg):
            if name in params:
                overlay(params[name], self.tensor(name, model.cfg))


def interleaved(head_dim: int) -> torch.Tensor:
    """Index k of nodd's channel order -> Hugging Face's: (j, j + d/2) become (2j, 2j+1)."""
    half = torch.arange(head_dim // 2)
    return torch.stack([half, half + head_dim // 2], dim=-1).flatten()


def fused_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg) -> torch.Tensor:
    """(heads*d, W), (kv*d, W), (kv*d, W) -> nodd's wqkv: [q_1..q_group, k, v] per kv head, the
    rotary channels of q and k interleaved."""
    d, kv = cfg.head_dim, cfg.num_kv_heads
    order = interleaved(d)
    q = q.view(kv, cfg.heads // kv, d, -1)[:, :, order]
    k = k.view(kv, 1, d, -1)[:, :, order]
    return torch.cat([q, k, v.view(kv, 1, d, -1)], dim=1).reshape(-1, q.shape[-1])


def overlay(full: torch.Tensor, part: torch.Tensor) -> None:
    """Copy `part` over `full`'s first rows (all of it for equal shapes); rows past the LLM's
    vocabulary (image ids, codes) keep their fresh values."""
    if part.shape[1:] != full.shape[1:] or part.shape[0] > full.shape[0]:
        raise DataError(f"a pretrained tensor of shape {tuple(part.shape)} does not fit the model's "
                        f"{tuple(full.shape)}; the checkpoint's config.json and its weights disagree")
    full[:part.shape[0]].copy_(part.to(full.dtype))

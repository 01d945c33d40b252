"""SampleBuilder: one shard row -> one model Document, plus the checks that the shards fit the
model and tokenizers the run uses.

An image row becomes a generation document (caption -> image), an understanding document
(image -> caption) or a plain-text document (its caption), drawn by the configured weights;
generation captions are dropped with `caption_dropout` (classifier-free guidance). Continuous
latents are drawn from the stored KL posterior and standardised per channel with the manifest's
statistics (`LatentNorm`; samplers invert it before decoding). Text rows are text documents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.errors import DataError
from data_prep import schema
from model.batch import Document
from model.config import ModelConfig
from pipeline.data.config import DataConfig

TASKS = ("generate", "understand", "text")


@dataclass
class LatentNorm:
    """Per-channel standardisation of continuous latents (channel axis -3)."""

    mean: np.ndarray  # (C,)
    std: np.ndarray  # (C,)

    @classmethod
    def from_manifests(cls, manifests: list[schema.Manifest]) -> "LatentNorm | None":
        stats = [m.latent_stats for m in manifests if m.latent_stats.get("count")]
        if not stats:
            return None
        counts = np.array([s["count"] for s in stats], dtype=np.float64)
        means = np.array([s["mean"] for s in stats])
        second = np.array([np.square(s["std"]) + np.square(s["mean"]) for s in stats])
        mean = (means * counts[:, None]).sum(0) / counts.sum()
        var = (second * counts[:, None]).sum(0) / counts.sum() - mean**2
        return cls(mean.astype(np.float32), np.sqrt(np.maximum(var, 1e-8)).astype(np.float32))

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> "LatentNorm":
        return cls(np.asarray(data["mean"], dtype=np.float32), np.asarray(data["std"], dtype=np.float32))

    def _stats(self, like):
        """mean, std shaped (C, 1, 1) like `like`: a numpy array or a torch tensor."""
        if isinstance(like, np.ndarray):
            return self.mean[:, None, None], self.std[:, None, None]
        import torch

        return (torch.as_tensor(v, dtype=like.dtype, device=like.device).view(-1, 1, 1) for v in (self.mean, self.std))

    def normalise(self, latent):
        """Numpy arrays or torch tensors whose channel axis is -3 ((C, H, W), (B, C, H, W), ...)."""
        mean, std = self._stats(latent)
        return (latent - mean) / std

    def denormalise(self, latent):
        mean, std = self._stats(latent)
        return latent * std + mean

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def check_tokenizers(cfg: DataConfig, manifests: list[schema.Manifest], model: ModelConfig, text) -> None:
    """Refuse shards made with another tokenizer than this run decodes with (`text` is the loaded
    data.text_tokenizer), and shards that do not fit the model (latent channels, codebook size,
    text vocabulary), before any step runs."""
    from model.tokenizers import image_tokenizer_fingerprint

    # a pretrained LLM's embedding may hold more rows than its tokenizer has ids (Qwen pads it)
    fits = text.vocab_size <= model.text_vocab_size if model.init_from else text.vocab_size == model.text_vocab_size
    if not fits:
        if model.init_from:
            raise DataError(f"text tokenizer has {text.vocab_size} ids, more than the {model.text_vocab_size} rows of "
                            f"model.init_from={model.init_from}'s embedding; use that LLM's own tokenizer.json")
        raise DataError(f"text tokenizer has {text.vocab_size} ids, model.text_vocab_size="
                        f"{model.text_vocab_size}; set them equal")
    for m, folder in zip(manifests, cfg.shard_dirs):
        if m.text_tokenizer.get("fingerprint") != text.fingerprint:
            raise DataError(f"{folder} was tokenised with text tokenizer {m.text_tokenizer.get('spec')!r}, not "
                            f"data.text_tokenizer={cfg.text_tokenizer!r}; use the same one or re-run prep")
        image = m.tokenizer
        if not image:
            continue
        path = cfg.tokenizer or image.get("path", "")
        try:
            found = image_tokenizer_fingerprint(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable tokenizer is the same user problem
            raise DataError(f"cannot read the image tokenizer at {path!r} ({exc}); set data.tokenizer to the "
                            "folder the shards were made with") from None
        if found != image.get("fingerprint"):
            raise DataError(f"{folder} was encoded with another image tokenizer than {path} (fingerprints "
                            "differ: retrained or replaced); point data.tokenizer at the one used for prep, "
                            "or re-run prep with this one")
        kind = image.get("kind")
        if model.mode == "discrete" and kind not in ("vq", "fsq"):
            raise DataError(f"model.mode='discrete' needs vq/fsq codes but {folder} holds {kind} latents")
        if model.mode != "discrete" and kind in ("vq", "fsq"):
            raise DataError(f"model.mode={model.mode!r} needs continuous (kl) latents but {folder} holds {kind} codes")
        if model.mode == "discrete" and image.get("vocab_size") != model.codebook_size:
            raise DataError(f"shards have {image.get('vocab_size')} codes, model.codebook_size={model.codebook_size}")
        shape = image.get("latent_shape") or []
        if model.mode != "discrete" and shape and shape[0] != model.latent_channels:
            raise DataError(f"shards have {shape[0]} latent channels, model.latent_channels={model.latent_channels}")


def _phrasings(name: str):
    """data.caption_variants -> caption -> its equivalent phrasings (None: captions as stored)."""
    if name == "shapes":
        from data_prep.builtin.shapes import paraphrases
        return paraphrases
    return None


def scale_coder(cfg: DataConfig, manifests: list[schema.Manifest], model: ModelConfig):
    """Discrete next-scale prediction (model.var_scales): a function from an (H, W) code map to its
    code pyramid, through the image tokenizer the shards were made with (model/scales.py); None
    for every other mode."""
    if model.mode != "discrete" or not model.next_scale_images:
        return None
    from model.scales import code_pyramid
    from model.tokenizers import load_image_tokenizer

    path = cfg.tokenizer or next((m.tokenizer.get("path", "") for m in manifests if m.tokenizer), "")
    if not path:
        raise DataError("discrete next-scale prediction (model.var_scales) needs the image tokenizer to make the "
                        "coarse scales' codes; set data.tokenizer to the vq/fsq tokenizer folder used for prep")
    tokenizer = load_image_tokenizer(path)

    @torch.no_grad()
    def pyramid(codes: np.ndarray) -> list[np.ndarray]:
        if codes.ndim != 2:
            raise DataError(f"next-scale generation makes single images; a row holds codes of shape {codes.shape}")
        maps = code_pyramid(torch.as_tensor(codes), model.var_scales, tokenizer.codes_to_latent,
                            tokenizer.latent_to_codes)
        return [m.numpy() for m in maps]

    return pyramid


class SampleBuilder:
    def __init__(self, cfg: DataConfig, model: ModelConfig, norm: LatentNorm | None, text, pyramid=None):
        """`text`: the run's text tokenizer (re-tokenises drawn caption variants); `pyramid`: the
        code pyramid of discrete next-scale prediction (`scale_coder`)."""
        self.pyramid = pyramid
        weights = np.array([cfg.text_to_image, cfg.image_to_text, cfg.text_only], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.cfg, self.mode, self.norm = cfg, model.mode, norm  # None: latents are used as stored
        self.phrasings, self.text = _phrasings(cfg.caption_variants), text

    def build(self, row: dict[str, Any], rng: np.random.Generator) -> Document:
        text_ids = list(row["text_ids"] or [])
        if row["modality"] == "text":
            return Document("text", text_ids)
        task = TASKS[int(rng.choice(3, p=self.weights))]
        if self.phrasings is not None and row.get("caption"):
            options = self.phrasings(row["caption"])
            if len(options) > 1:  # options[0] is the stored caption: keep its stored ids
                pick = int(rng.integers(len(options)))
                text_ids = text_ids if pick == 0 else self.text.encode(options[pick])
        if task == "text":
            return Document("text", text_ids)
        if task == "generate" and rng.random() < self.cfg.caption_dropout:
            text_ids = []
        if self.mode == "discrete":
            if not row.get("codes"):
                raise DataError(f"row {row['key']} has no codes; discrete mode needs shards made by a vq/fsq tokenizer")
            codes = schema.decode_codes(row).astype(np.int64)
            scale_codes = self.pyramid(codes) if self.pyramid is not None and task == "generate" else None
            return Document(task, text_ids, codes=codes, scale_codes=scale_codes)
        mean, logvar = schema.decode_latent(row)
        latent = mean.astype(np.float32)
        if self.cfg.sample_latents and logvar is not None:
            latent = latent + np.exp(0.5 * logvar.astype(np.float32)) * rng.standard_normal(latent.shape, np.float32)
        if self.norm is not None:
            latent = self.norm.normalise(latent).astype(np.float32)
        return Document(task, text_ids, latent=latent)

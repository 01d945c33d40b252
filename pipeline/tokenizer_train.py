"""`nodd tokenizer train`: train an image/video tokenizer (KL-VAE, VQ, FSQ) or a text BPE on any
source and write it where prep and training can load it.

    nodd tokenizer train --config configs/tokenizer/shapes_kl.toml
    nodd tokenizer train --config configs/tokenizer/shapes_kl.toml kind=fsq steps=3000 out_dir=runs/tok/fsq
    nodd tokenizer train kind=bpe source.kind=text source.path=corpus/ out_dir=runs/tok/bpe

Image kinds write tokenizer.safetensors, tokenizer_config.json, fingerprint.txt, metrics.json
(reconstruction PSNR on held-out images, codebook utilisation, information budget per image),
reconstructions.png and the resolved config. `bpe` writes tokenizer.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from core.config import save_resolved
from core.errors import ConfigError, DataError
from data_prep.config import ImageConfig, SourceConfig, VideoConfig
from data_prep.sources import Sample, SampleFailure, build_source
from model.tokenizers.config import TokenizerConfig

log = logging.getLogger(__name__)


@dataclass
class TokenizerTrainConfig:
    """`kind` picks the tokenizer; `net` sizes the image autoencoder (its kind and image size are
    taken from `kind` and `image.size`)."""

    kind: Literal["kl", "vq", "fsq", "bpe"] = "kl"
    source: SourceConfig = field(default_factory=lambda: SourceConfig(kind="shapes", limit=4000))
    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    net: TokenizerConfig = field(default_factory=TokenizerConfig)
    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    # Images held out of training to measure reconstruction PSNR and codebook use.
    eval_images: int = 256
    # BPE only: vocabulary size (the byte alphabet and specials included).
    bpe_vocab_size: int = 1024
    out_dir: str = "runs/tokenizers/shapes_kl"

    def validate(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        if self.kind != "bpe":
            self.net.kind = self.kind
            self.net.image_size = self.image.size
            self.net.validate()


def train_tokenizer(cfg: TokenizerTrainConfig) -> dict:
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out_dir / "train_config.toml")
    source = build_source(cfg.source, cfg.image, cfg.video, out_dir / "_generated")
    samples, failures = _load_all(source)
    if failures:
        log.warning("%d samples skipped while loading (first: %s: %s)", len(failures), failures[0].key, failures[0].reason)
    if cfg.kind == "bpe":
        return _train_bpe(cfg, samples, out_dir)
    return _train_image(cfg, samples, out_dir)


def _load_all(source) -> tuple[list[Sample], list[SampleFailure]]:
    from rich.progress import track

    items = list(source.items())
    samples, failures = [], list(source.listing_errors)
    chunks = [items[i:i + 256] for i in range(0, len(items), 256)]
    for chunk in track(chunks, description="loading samples", transient=True):
        for result in source.load_batch(chunk):
            (failures if isinstance(result, SampleFailure) else samples).append(result)
    return samples, failures


def _train_bpe(cfg: TokenizerTrainConfig, samples: list[Sample], out_dir: Path) -> dict:
    from model.tokenizers.text import train_bpe

    texts = [s.caption for s in samples if s.caption]
    if not texts:
        raise DataError(f"source {cfg.source.kind} has no captions or text to train a BPE on")
    tokenizer = train_bpe(texts, cfg.bpe_vocab_size, out_dir / "tokenizer.json")
    ids = [len(tokenizer.encode(t)) for t in texts[:2000]]
    chars = [len(t.encode("utf-8")) for t in texts[:2000]]
    result = {"kind": "bpe", "path": str(out_dir / "tokenizer.json"), "vocab_size": tokenizer.vocab_size,
              "fingerprint": tokenizer.fingerprint, "texts": len(texts),
              "bytes_per_token": round(sum(chars) / max(sum(ids), 1), 3)}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _train_image(cfg: TokenizerTrainConfig, samples: list[Sample], out_dir: Path) -> dict:
    import torch
    from rich.progress import Progress

    from model.tokenizers import ImageTokenizer, evaluate, fit, save_tokenizer

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    images = _frames(samples)  # (N, 3, H, W) uint8
    if len(images) < 2:
        raise DataError(f"source {cfg.source.kind} gave {len(images)} usable images; a tokenizer needs more")
    held_out = min(cfg.eval_images, max(1, len(images) // 10))
    train, test = images[:-held_out], images[-held_out:]
    tokenizer = ImageTokenizer(cfg.net)
    generator = torch.Generator().manual_seed(cfg.seed)

    def batches():
        while True:
            index = torch.randint(len(train), (cfg.batch_size,), generator=generator)
            yield train[index].float().div(127.5).sub(1.0)

    started = time.perf_counter()
    with Progress(transient=False) as progress:
        task = progress.add_task(f"training {cfg.kind} tokenizer", total=cfg.steps)

        def on_step(step: int, losses: dict[str, float]) -> None:
            progress.update(task, completed=step + 1, description=f"training {cfg.kind} loss {losses['total']:.4f}")
            if (step + 1) % max(1, cfg.steps // 10) == 0:  # for logs, where the bar is not drawn
                log.info("step %d/%d %s", step + 1, cfg.steps, " ".join(f"{k}={v:.4g}" for k, v in losses.items()))

        history = fit(tokenizer, batches(), cfg.steps, lr=cfg.lr, on_step=on_step)
    seconds = time.perf_counter() - started
    tokenizer.eval()
    metrics = evaluate(tokenizer, test.float().div(127.5).sub(1.0))
    fingerprint = save_tokenizer(tokenizer, out_dir)
    _save_reconstructions(tokenizer, test[:8], out_dir / "reconstructions.png")
    result = {
        "kind": cfg.kind, "path": str(out_dir), "fingerprint": fingerprint, "steps": cfg.steps,
        "train_images": len(train), "eval_images": len(test), "train_seconds": round(seconds, 1),
        "final_loss": history[-1]["total"] if history else None,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()},
        "info_budget": tokenizer.info_budget(),
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    log.info("tokenizer %s: PSNR %.2f dB on %d held-out images, %s", cfg.kind, metrics["psnr"], len(test),
             _budget_line(result["info_budget"]))
    return result


def _frames(samples: list[Sample]):
    """All images, with every frame of every video as an image: uint8 (N, 3, H, W)."""
    import torch

    arrays = [s.pixels[None] if s.modality == "image" else s.pixels for s in samples if s.pixels is not None]
    if not arrays:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).contiguous()


def _save_reconstructions(tokenizer, images, path: Path) -> None:
    import torch

    from data_prep.shards import save_grid

    with torch.inference_mode():
        x = images.float().div(127.5).sub(1.0)
        recon = tokenizer(x)[0] if tokenizer.config.kind != "kl" else tokenizer.decode(tokenizer.encode(x).mean)
    pairs = torch.cat([x, recon.clamp(-1, 1)]).add(1).mul(127.5).round().to(torch.uint8)
    save_grid(pairs.permute(0, 2, 3, 1).numpy(), path, columns=len(images))


def _budget_line(budget: dict) -> str:
    if "vocab" in budget:
        return f"{budget['tokens']} tokens x log2({budget['vocab']}) = {budget['bits_per_image']:.0f} bits per image"
    return f"latent {budget['latent_shape']} {budget['dtype']} = {budget['values']} values per image"

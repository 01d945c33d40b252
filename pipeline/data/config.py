"""DataConfig: what the training loader reads and how it turns rows into packed batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from core.errors import ConfigError


@dataclass
class DataConfig:
    """The `data` section of a train config.

    Fields:
        shards: one prep output folder (with manifest.json) or a list of them.
        tokenizer: the image tokenizer folder the model decodes with; its fingerprint must equal
            the one the shards were made with ("" = the path recorded in the manifest, still
            fingerprint-checked, so a tokenizer retrained in place is caught).
        text_tokenizer: "byte" or a tokenizer.json; checked against the manifest the same way.
        seq_len: tokens per packed row.
        batch_rows: rows per step on each data-parallel rank.
        text_to_image, image_to_text, text_only: how image rows are used (normalised weights):
            generation, understanding (captioning), or their caption as plain text.
        caption_dropout: probability of an empty caption in generation documents (the
            unconditional branch classifier-free guidance needs).
        sample_latents: draw latents from the stored KL posterior N(mean, exp(logvar)) instead
            of using the mean.
        caption_variants: "" (captions as stored) or "shapes": each use of a shapes caption
            draws one of its equivalent phrasings (data_prep.builtin.shapes.paraphrases: a
            relation named from either object) and re-tokenises it, so one image is seen as
            "A left of B" and as "B right of A" (COCO-style several captions per image). Off in
            the demo: a 1,000-step run (seed 1) gave captions 0.84 with it, 0.80 without.
        normalise_latents: standardise each latent channel with the manifest's statistics.
        shuffle_buffer: rows held for shuffling (0 = read in shard order).
        seed: seeds shard order, shuffling, task draws, dropout and noise; epoch-dependent.
        lookahead: documents the packer considers per batch (best-fit decreasing over them);
            more packs tighter, and those left over wait for the next batch.
        prefetch: steps of batches packed ahead in a background thread while a step computes
            (pipeline/data/prefetch.py); 0 packs inside the step; -1 (auto): 2 on a GPU, 0 on a
            CPU, where the thread slowed the step (it competes with the step's threads for the
            cores). Checkpoints record the data consumed either way, so resuming is exact.
    """

    shards: str | list[str] = "runs/demo/shards/shapes"
    tokenizer: str = ""
    text_tokenizer: str = "byte"
    seq_len: int = 512
    batch_rows: int = 4
    text_to_image: float = 0.6
    image_to_text: float = 0.3
    text_only: float = 0.1
    caption_dropout: float = 0.1
    sample_latents: bool = True
    caption_variants: Literal["", "shapes"] = ""  # the phrasings behind each name: pipeline/data/samples.py
    normalise_latents: bool = True
    shuffle_buffer: int = 1024
    seed: int = 0
    lookahead: int = 64
    prefetch: int = -1

    @property
    def shard_dirs(self) -> list[str]:
        return [self.shards] if isinstance(self.shards, str) else list(self.shards)

    def validate(self) -> None:
        if not self.shard_dirs or not all(self.shard_dirs):
            raise ConfigError("data.shards must name at least one prep output folder")
        if self.seq_len < 8 or self.batch_rows < 1:
            raise ConfigError("data.seq_len must be >= 8 and data.batch_rows >= 1")
        weights = (self.text_to_image, self.image_to_text, self.text_only)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ConfigError("data.text_to_image, data.image_to_text and data.text_only must be >= 0 "
                              "and not all zero")
        if not 0 <= self.caption_dropout <= 1:
            raise ConfigError(f"data.caption_dropout={self.caption_dropout} must be in [0, 1]")
        if self.shuffle_buffer < 0 or self.lookahead < 0 or self.prefetch < -1:
            raise ConfigError("data.shuffle_buffer and data.lookahead must be >= 0, data.prefetch >= -1 (auto)")

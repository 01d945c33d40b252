"""PackedLoader: documents -> fixed-length packed rows (best fit) -> model.batch.PackedBatch.

    loader = PackedLoader(data_cfg, model_cfg, rank=dp_rank, world=dp_size)
    batch = loader.next_batch()          # `batch_rows` rows of `seq_len` tokens
    state = loader.state_dict()          # goes into every checkpoint; load_state_dict resumes exactly

Best-fit decreasing (model.batch.best_fit) over a window of `lookahead` documents: longest
first, each into the row whose free space it fills most tightly; what fits nowhere waits for the
next batch. Rows end nearly full without ever splitting a document (or an image). `efficiency` =
non-padding tokens / tokens emitted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from core.errors import DataError
from model.batch import Document, PackedBatch, Packer, best_fit
from model.config import ModelConfig
from pipeline.data.config import DataConfig
from pipeline.data.reader import ShardReader
from pipeline.data.samples import LatentNorm, SampleBuilder, check_tokenizers, scale_coder


class PackedLoader:
    def __init__(self, cfg: DataConfig, model: ModelConfig, rank: int = 0, world: int = 1, split: str = "train"):
        """`split`: the shard rows to read ("val": prep's held-out rows, for validation)."""
        from model.tokenizers import load_text_tokenizer

        self.cfg, self.model = cfg, model
        self.reader = ShardReader(cfg.shard_dirs, rank, world, cfg.seed, cfg.shuffle_buffer, split)
        text = load_text_tokenizer(cfg.text_tokenizer)
        check_tokenizers(cfg, self.reader.manifests, model, text)
        self.norm = LatentNorm.from_manifests(self.reader.manifests) if cfg.normalise_latents else None
        self.builder = SampleBuilder(cfg, model, self.norm, text, scale_coder(cfg, self.reader.manifests, model))
        self.packer = Packer(model, text.bos_id, text.eos_id, text.pad_id)
        self.rng = np.random.default_rng([cfg.seed, rank, 2])
        self.torch_rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
        self.pending: list[Document] = []  # documents read but not yet placed (packer leftovers)
        self.real_tokens = self.emitted_tokens = 0

    @property
    def efficiency(self) -> float:
        return self.real_tokens / max(self.emitted_tokens, 1)

    def _next_document(self) -> Document:
        doc = self.builder.build(self.reader.next(), self.rng)
        if self.packer.length(doc) > self.cfg.seq_len:
            raise DataError(f"a {self.packer.length(doc)}-token document does not fit data.seq_len="
                            f"{self.cfg.seq_len}; raise seq_len (an image is never split)")
        return doc

    def next_batch(self) -> PackedBatch:
        """`best_fit` over a window: the documents left over from the last batch plus new ones up
        to `lookahead` into `batch_rows` rows; what fits nowhere waits for the next batch (and
        goes first then, being among the longest)."""
        cfg = self.cfg
        pool = self.pending
        lengths = [self.packer.length(d) for d in pool]
        capacity = cfg.batch_rows * cfg.seq_len
        # enough documents to choose from: the window, and at least 1.5 batches' worth of tokens
        while len(pool) < cfg.lookahead or sum(lengths) < 1.5 * capacity:
            pool.append(self._next_document())
            lengths.append(self.packer.length(pool[-1]))
        rows, left_over = best_fit(lengths, cfg.seq_len, cfg.batch_rows)
        self.pending = [pool[i] for i in left_over]
        self.real_tokens += sum(lengths[i] for row in rows for i in row)
        self.emitted_tokens += capacity
        return self.packer.collate([[pool[i] for i in row] for row in rows], cfg.seq_len, self.torch_rng)

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ---- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"reader": self.reader.state_dict(), "rng": self.rng.bit_generator.state,
                "torch_rng": self.torch_rng.get_state(), "pending": list(self.pending),
                "tokens": (self.real_tokens, self.emitted_tokens)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.load_state_dict(state["reader"])
        same_layout = (state["reader"]["rank"], state["reader"]["world"]) == (self.reader.rank, self.reader.world)
        if same_layout:
            self.rng.bit_generator.state = state["rng"]
            self.torch_rng.set_state(state["torch_rng"])
            self.pending = list(state["pending"])
        self.real_tokens, self.emitted_tokens = state["tokens"]

"""Validation during training (`train.eval_every`): the loss breakdown on a fixed set of packed
batches of prep's held-out rows (`split.val_fraction`), forward only, on any engine and layout.

    val = Validation(cfg, engine)           # builds the batches once (every rank the same ones)
    losses = val.run(engine)                # {"loss", "text", "understanding", "image"}

The set is `train.eval_batches` packed batches (rounded up to a multiple of the data-parallel
ranks x `optim.grad_accum`, since every rank evaluates equally many groups of grad_accum
micro-batches, as pipeline schedules need), read in one fixed order by a one-rank loader, so a
layout that divides the count evaluates exactly the batches a one-process run does. The noise and
time draws of batch i are seeded by i alone: the same draws at every evaluation, so the curve
moves with the weights only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from pipeline.data.loader import PackedLoader
from pipeline.engines.base import LOSS_PARTS

log = logging.getLogger(__name__)
VAL_SEED_BASE = 1 << 40  # validation draws never coincide with a training step's (train/loop.py: noise_seed)


class Validation:
    def __init__(self, cfg, engine):
        accum, dp = cfg.optim.grad_accum, engine.dp_size
        groups_per_rank = math.ceil(cfg.train.eval_batches / (dp * accum))
        total = groups_per_rank * dp * accum
        if total != cfg.train.eval_batches:
            log.info("validation: %d batches (train.eval_batches=%d rounded up to a multiple of %d data-parallel "
                     "ranks x %d micro-batches)", total, cfg.train.eval_batches, dp, accum)
        loader = PackedLoader(replace(cfg.data, shuffle_buffer=0), cfg.model, split="val")
        batches = [loader.next_batch() for _ in range(total)]
        groups = [list(range(g * accum, (g + 1) * accum)) for g in range(total // accum)]
        mine = groups[engine.dp_rank::dp]  # this rank's groups: as many as every other rank's
        device = engine.info.device
        self.groups = [([batches[i].to(device) for i in g], [VAL_SEED_BASE + i for i in g]) for g in mine]

    def run(self, engine) -> dict[str, float]:
        """The mean loss breakdown over the whole set (every rank gets the same numbers)."""
        totals = dict.fromkeys(LOSS_PARTS, 0.0)
        for micro_batches, seeds in self.groups:
            for k, v in engine.eval_step(micro_batches, seeds).items():
                totals[k] += v / len(self.groups)
        return totals

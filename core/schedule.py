"""The learning-rate schedule both trainers use: linear warmup, then cosine decay to a floor.

    lr = cfg.lr * warmup_cosine(step, warmup, end=total_steps, floor=min_lr_ratio)  # OptimConfig.lr_at
    lr = warmup_cosine(step, warmup, end=steps - 1, floor=0.1, peak=lr)         # model/tokenizers

Pure arithmetic on floats, so it lives in the standard-library-only `core`, where `model` and
`pipeline` can both reach it.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup: int, end: int, floor: float, peak: float = 1.0) -> float:
    """`peak` * ((step + 1) / warmup) for the first `warmup` steps, then a cosine from `peak` down
    to `floor * peak`, reached at step `end` and held after it. Step 0 is the first step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, end - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))

"""core.schedule: the one warmup + cosine schedule gives both trainers exactly the values of the
two formulas it replaced (the model trainer's, now OptimConfig.lr_at, and the tokenizer trainer's)."""

import math
from itertools import pairwise

import pytest

from core.schedule import warmup_cosine
from pipeline.train.config import OptimConfig


def old_lr_factor(step, warmup, min_ratio, total):
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def old_lr_at(step, steps, lr, warmup, final_frac=0.1):
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@pytest.mark.parametrize("warmup, min_ratio, total", [(50, 0.1, 200), (0, 0.0, 37), (3, 0.25, 1000), (10, 0.1, 10)])
def test_trainer_factor_is_bit_identical_to_the_old_formula(warmup, min_ratio, total):
    cfg = OptimConfig(warmup_steps=warmup, min_lr_ratio=min_ratio)
    for step in range(total + 5):
        assert cfg.lr_at(step, total) == cfg.lr * old_lr_factor(step, warmup, min_ratio, total), step


@pytest.mark.parametrize("steps, lr, warmup", [(350, 2e-3, 17), (1500, 2e-3, 75), (7, 3e-4, 1), (2, 0.1, 1), (40, 1e-3, 39)])
def test_tokenizer_lr_is_bit_identical_to_the_old_formula(steps, lr, warmup):
    for step in range(steps):
        assert warmup_cosine(step, warmup, end=steps - 1, floor=0.1, peak=lr) == old_lr_at(step, steps, lr, warmup), step


def test_shape_warms_up_linearly_then_decays_to_the_floor_at_end():
    values = [warmup_cosine(s, 4, end=14, floor=0.2) for s in range(20)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in pairwise(values[4:]))
    assert values[14:] == [pytest.approx(0.2)] * 6

"""train.freeze: parameters that do not train (JanusFlow / LLaVA-style stages: adapters and heads
first with the LLM frozen, then everything).

    train.freeze = ["backbone"]                      # every backbone parameter
    train.freeze = ["backbone.layers.0.*", "tok_embeddings"]

A pattern names parameters of MultimodalModel (`model.named_parameters()`): the name itself, a
prefix of whole components (`backbone` is `backbone.*`) or an fnmatch pattern. A pattern that
matches nothing is an error (a typo would otherwise train everything). Frozen parameters get
requires_grad=False before the optimizer is built, so the optimizer holds (and checkpoints)
only the trainable ones; every engine's optimizer already takes only those. Freezing
`tok_embeddings` freezes the image ids and codes in it too (one tensor).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
from torch import nn

from core.errors import ConfigError


def matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + ".") or fnmatchcase(name, pattern)


def frozen_names(names: list[str], patterns: list[str]) -> set[str]:
    """The names any pattern matches; a pattern that matches none is a ConfigError."""
    out = set()
    for pattern in patterns:
        hit = {n for n in names if matches(n, pattern)}
        if not hit:
            sample = ", ".join(sorted({n.split(".")[0] for n in names}))
            raise ConfigError(f"train.freeze pattern {pattern!r} matches no parameter; the model's components are "
                              f"{sample} (e.g. 'backbone', 'backbone.layers.0.*', 'lm_head')")
        out |= hit
    return out


def check_patterns(model_cfg, patterns: list[str]) -> None:
    """The checks `freeze` makes, on a meta build of the model `model_cfg` (a ModelConfig) describes."""
    from model.multimodal import MultimodalModel

    if any(not isinstance(p, str) or not p for p in patterns):
        raise ConfigError(f"train.freeze must list non-empty parameter-name patterns, got {patterns}")
    with torch.device("meta"):
        freeze(MultimodalModel(model_cfg), patterns)


def freeze(model: nn.Module, patterns: list[str]) -> int:
    """Set requires_grad=False on `model`'s (whole, unsplit MultimodalModel) parameters that the
    patterns name; returns how many tensors that froze."""
    if not patterns:
        return 0
    named = dict(model.named_parameters())
    frozen = frozen_names(list(named), patterns)
    if len(frozen) == len(named):
        raise ConfigError(f"train.freeze={patterns} freezes every parameter; leave some to train")
    for name in frozen:
        named[name].requires_grad_(False)
    return len(frozen)

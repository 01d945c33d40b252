"""Output heads beyond the LM projection: MAR's per-token flow-matching MLP.

MARHead predicts the velocity of one latent token (D values) from its noised value x_t, the time
t and the transformer output z at the position before it: residual MLP blocks whose norms are
modulated (shift, scale, gate) by z + time embedding, zero-initialised so each block starts as the
identity (DiT's adaLN-Zero; MAR's SimpleMLPAdaLN).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from model.adapters import TimeEmbedding
from model.config import ModelConfig
from model.transformer import Init


class _AdaBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(cond).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class MARHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = cfg.mar_head_width
        self.cfg = cfg
        self.input = nn.Linear(cfg.patch_dim, width)
        self.cond = nn.Linear(cfg.width, width)
        self.time = TimeEmbedding(width)
        self.blocks = nn.ModuleList(_AdaBlock(width) for _ in range(cfg.head_depth))
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.output = nn.Linear(width, cfg.patch_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(N, D) noised tokens, (N,) times, (N, width) conditions -> (N, D) velocity."""
        cond = self.cond(z) + self.time(t)
        x = self.input(x_t.to(self.input.weight.dtype))
        for block in self.blocks:
            x = block(x, cond)
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        return self.output(self.final_norm(x) * (1 + scale) + shift)

    def initializers(self) -> Iterator[tuple[nn.Parameter, Init]]:
        """Xavier-uniform Linear weights, zero biases; the modulations and the output zeroed
        (adaLN-Zero). A zeroed weight still draws its Xavier values first, as this head always
        has, so the random stream (and every later parameter) stays what it was."""
        zeroed = {id(layer) for layer in (*(b.modulation[-1] for b in self.blocks), self.final_modulation[-1],
                                          self.output)}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                yield module.weight, _drawn_then_zeroed if id(module) in zeroed else nn.init.xavier_uniform_
                yield module.bias, nn.init.zeros_


def _drawn_then_zeroed(weight: torch.Tensor) -> torch.Tensor:
    nn.init.xavier_uniform_(weight)
    return nn.init.zeros_(weight)

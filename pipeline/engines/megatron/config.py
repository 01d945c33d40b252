"""MegatronConfig: the `[megatron]` section, settings only train.engine="megatron" reads
(standard library only: configs load without megatron-core installed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from core.errors import ConfigError

CoreAttention = Literal["nodd", "local", "te"]


@dataclass
class MegatronConfig:
    """Fields:
        core_attention: "nodd" runs nodd's attention (SDPA per document on CPU, flex or flash-attn
            on GPU) inside megatron's SelfAttention; "local" runs megatron's DotProductAttention on
            a dense (B, 1, T, T) mask, which materialises every score (short rows only); "te" runs
            NVIDIA Transformer Engine's DotProductAttention on that mask (`arbitrary` mask type:
            TE's unfused path; GPU only, needs transformer-engine installed).
        distributed_optimizer: shard the optimizer state over the data-parallel ranks (megatron's
            distributed optimizer, ZeRO-1); false keeps a full copy on each. With one
            data-parallel rank it has nothing to shard and the plain optimizer runs.
        virtual_stages: model chunks per pipeline rank (megatron's virtual pipeline size); above 1
            the interleaved 1F1B schedule runs, rank r holding virtual stages r, r + pp, ...: a
            smaller pipeline bubble for more point-to-point traffic. Needs parallel.pp > 1,
            model.depth divisible by pp * virtual_stages and optim.grad_accum by pp.
    """

    core_attention: CoreAttention = "nodd"
    distributed_optimizer: bool = True
    virtual_stages: int = 1

    def validate(self) -> None:
        if self.core_attention not in get_args(CoreAttention):
            raise ConfigError(f"megatron.core_attention must be one of {', '.join(get_args(CoreAttention))}, "
                              f"got {self.core_attention!r}")
        if self.virtual_stages < 1:
            raise ConfigError(f"megatron.virtual_stages must be >= 1, got {self.virtual_stages}")

"""DeepSpeedConfig: the `[deepspeed]` section, settings only train.engine="deepspeed" reads
(standard library only: configs load without DeepSpeed installed)."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError


@dataclass
class DeepSpeedConfig:
    """Fields:
        zero_stage: ZeRO partitioning over the data-parallel ranks: 1 the optimizer state, 2 also
            the gradients, 3 also the parameters (gathered module by module as it runs).
        offload_optimizer: keep the optimizer state and step on the CPU (ZeRO-Offload; DeepSpeed's
            CPU Adam, compiled at first use).
        offload_params: ZeRO-3 only: keep the parameter partitions on the CPU between uses
            (ZeRO-Infinity's parameter offload; the gathered copies still run on the device).
        param_persistence_threshold: ZeRO-3 keeps parameters with fewer elements than this
            gathered (DeepSpeed's default 1e5); 0 partitions every parameter, what the tests use
            so that a small model cannot hide a module that one rank skips.
    """

    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    param_persistence_threshold: int = 100_000

    def validate(self) -> None:
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError(f"deepspeed.zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        if self.offload_params and self.zero_stage != 3:
            raise ConfigError("deepspeed.offload_params=true needs deepspeed.zero_stage=3 (only ZeRO-3 partitions the "
                              "parameters)")
        if self.param_persistence_threshold < 0:
            raise ConfigError("deepspeed.param_persistence_threshold must be >= 0")

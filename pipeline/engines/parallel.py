"""ParallelConfig: the engine-neutral `[parallel]` section. The degrees every engine reads,
checked once against the world size and the model before any process starts (`nodd train`,
`nodd submit`), with messages that say what to change. Standard library only, so checking a
layout imports no torch.

Each engine adds its own rules in `Engine.check` (e.g. a schedule it does not run) and builds
its own process groups from the resolved degrees (native: `build_mesh` in engines/native/parallelize.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from core.errors import ConfigError

PipelineSchedule = Literal["1f1b", "gpipe"]


@dataclass
class ParallelConfig:
    """The `parallel` section of a train config.

    Fields:
        dp_replicate: data-parallel replicas (HSDP's replicate dimension; plain DDP-like copies).
        dp_shard: data-parallel ranks that shard parameters, gradients and optimizer state (FSDP2);
            -1 = whatever the world size leaves after the other degrees.
        tp: tensor-parallel ranks (attention heads and MLP units split column/row-wise).
        pp: pipeline stages (blocks cut at layer boundaries; optim.grad_accum micro-batches per
            step flow through them).
        pp_schedule: "1f1b" (needs grad_accum >= pp) or "gpipe" (all forwards, then all backwards:
            more activation memory, any micro-batch count).
    """

    dp_replicate: int = 1
    dp_shard: int = -1
    tp: int = 1
    pp: int = 1
    pp_schedule: PipelineSchedule = "1f1b"

    def validate(self) -> None:
        """What holds for any world size (called when the config is loaded)."""
        for name in ("dp_replicate", "tp", "pp"):
            if getattr(self, name) < 1:
                raise ConfigError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.dp_shard < 1 and self.dp_shard != -1:
            raise ConfigError(f"parallel.dp_shard must be >= 1 or -1 (fill from the world size), got {self.dp_shard}")
        if self.pp_schedule not in get_args(PipelineSchedule):
            raise ConfigError(f"parallel.pp_schedule must be one of {', '.join(get_args(PipelineSchedule))}, "
                              f"got {self.pp_schedule!r}")

    def resolved(self, world: int) -> "ParallelConfig":
        """Fill dp_shard=-1 from the world size and check the product equals it."""
        self.validate()
        others = self.dp_replicate * self.tp * self.pp
        dp_shard = self.dp_shard
        if dp_shard == -1:
            if world % others:
                raise ConfigError(f"world size {world} is not divisible by dp_replicate*tp*pp = {others}; "
                                  "change the degrees or the number of processes")
            dp_shard = world // others
        if dp_shard < 1 or dp_shard * others != world:
            raise ConfigError(
                f"parallel degrees dp_replicate={self.dp_replicate} x dp_shard={dp_shard} x tp={self.tp} x "
                f"pp={self.pp} = {dp_shard * others} do not match the world size {world}; make their product "
                f"{world} (or set parallel.dp_shard=-1 to fill it)")
        return ParallelConfig(self.dp_replicate, dp_shard, self.tp, self.pp, self.pp_schedule)

    @property
    def dp(self) -> int:
        return self.dp_replicate * max(self.dp_shard, 1)

    def check_model(self, model, microbatches: int = 1) -> None:
        """Degrees the model's shapes (model: a ModelConfig) and the micro-batches per step allow."""
        if model.num_kv_heads % self.tp:
            raise ConfigError(f"parallel.tp={self.tp} must divide the key/value heads ({model.num_kv_heads}) "
                              f"and heads ({model.heads}): each rank holds whole head groups")
        if model.hidden % self.tp:
            raise ConfigError(f"parallel.tp={self.tp} must divide the MLP hidden size {model.hidden}")
        if model.depth % self.pp:
            raise ConfigError(f"parallel.pp={self.pp} must divide model.depth={model.depth} (stages hold whole blocks)")
        if self.pp > 1 and model.tie_embeddings:
            raise ConfigError("parallel.pp > 1 needs model.tie_embeddings=false: the embedding lives on the first "
                              "stage and the LM head on the last")
        if self.pp > 1 and self.pp_schedule == "1f1b" and microbatches < self.pp:
            raise ConfigError(f"the 1F1B pipeline schedule needs at least parallel.pp={self.pp} micro-batches per "
                              f"step; set optim.grad_accum >= {self.pp} (got {microbatches}) or "
                              "parallel.pp_schedule=gpipe")

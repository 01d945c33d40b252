"""The Engine interface every training engine implements, and the lazy registry of engines.

    engine_class = get_engine(cfg.train.engine)             # ConfigError names the extra to install
    pcfg = engine_class.check(cfg.parallel, cfg.model, world, cfg.optim.grad_accum)   # before any process
    engine = engine_class(cfg, dist_info)                   # builds the parallel model and optimizer
    result = engine.train_step(micro_batches, seeds, lr)    # StepResult: losses over dp ranks, grad norm
    losses = engine.eval_step(micro_batches, seeds)         # forward only: validation (train.eval_every)
    engine.save(folder); engine.load(folder)                # model + optimizer payload of a checkpoint
    weights = engine.export_state_dict()                    # MultimodalModel names, for sampling/eval

The trainer (pipeline/train/loop.py) keeps what is engine-neutral: the schedule, batches and noise
seeds, metrics, the stop flag and the checkpoint folder protocol; an engine owns the model, the
optimizer and the parallelism (OLMo-core's TrainModule, torchtitan's TrainSpec). Every engine
must give the loss a one-process native run gives on the same weights and data
(tests/pipeline/engines/test_parity.py drives each registered engine through this interface).
"""

from __future__ import annotations

import importlib
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from core.errors import ConfigError
from pipeline.engines.parallel import ParallelConfig

if TYPE_CHECKING:  # torch stays out of `nodd submit` and config checks
    import torch

    from model.batch import PackedBatch
    from model.config import ModelConfig
    from model.multimodal import MultimodalModel
    from pipeline.distributed import DistInfo
    from pipeline.train.config import TrainConfig

LOSS_PARTS = ("loss", "text", "understanding", "image")  # the breakdown every step reports


@dataclass
class StepResult:
    losses: dict[str, float]  # LOSS_PARTS, averaged over micro-batches and data-parallel ranks
    grad_norm: float  # global L2 norm of the gradients before clipping


class Engine(ABC):
    """One training engine: owns the parallel model, its optimizer and their state."""

    name: ClassVar[str]

    @classmethod
    def check(cls, parallel: ParallelConfig, model: ModelConfig, world: int, microbatches: int) -> ParallelConfig:
        """The layout resolved for `world` processes, or a ConfigError saying what to change.
        Cheap (no process group, no model): `nodd train` and `nodd submit` call it before any
        process starts. Engines extend it with their own rules."""
        resolved = parallel.resolved(world)
        resolved.check_model(model, microbatches)
        return resolved

    @classmethod
    def check_settings(cls, cfg: TrainConfig) -> None:
        """A ConfigError for train settings this engine does not run (precision, compile, ...),
        checked with the layout before any process starts."""

    @abstractmethod
    def __init__(self, cfg: TrainConfig, dist: DistInfo):
        """Build this rank's part of the parallel model (every layout starting from the weights
        of a one-process run, or from train.init_from) and its optimizer. Sets `self.cfg`,
        `self.info` (the DistInfo), `self.pcfg` (the resolved layout) and `self._matmul_params`,
        which the shared properties and eval_model below read."""

    @property
    @abstractmethod
    def dp_rank(self) -> int:
        """This rank's data-parallel index: which shard of the data its loader reads."""

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks (model replicas or shards that read different data)."""
        return self.pcfg.dp

    @property
    def matmul_params(self) -> int:
        """Parameters of the whole model that take part in a matmul per token (for MFU)."""
        return self._matmul_params

    @abstractmethod
    def train_step(self, micro_batches: list[PackedBatch], seeds: list[int], lr: float) -> StepResult:
        """One optimizer step over this rank's micro-batches: forward and backward, gradient
        sync, clipping, the optimizer step at learning rate `lr`, and zeroing the gradients.
        `seeds[i]` seeds micro-batch i's noise and time draws."""

    @abstractmethod
    def eval_step(self, micro_batches: list[PackedBatch], seeds: list[int]) -> dict[str, float]:
        """The loss breakdown (LOSS_PARTS) of these micro-batches, forward only: no gradients, no
        optimizer, the weights unchanged. Averaged like train_step's: over the micro-batches
        (`optim.grad_accum` of them, as a pipeline schedule expects) and data-parallel ranks."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the model and optimizer state into `folder` (every rank calls it)."""

    @abstractmethod
    def load(self, folder: Path) -> None:
        """Restore what `save` wrote, possibly under another layout or world size."""

    @abstractmethod
    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Full CPU tensors in MultimodalModel parameter names (every rank calls it): the weight
        average when cfg.optim.ema_decay > 0, else the current weights. Each
        returns the names it is responsible for writing, so the union over ranks is the whole
        model and no name appears twice; most ranks return nothing."""

    def held_state_bytes(self) -> dict[str, int]:
        """Bytes of model state this rank holds: its parameters (a shard counts as its local
        part) and its optimizer state (moments; master weights where they are copies, not the
        parameters' own storage). What sharding (FSDP, ZeRO) divides across ranks; logged beside
        the peak memory."""
        params, moments, masters = self.state_holders()
        own = {_storage(p) for p in params}
        copies = [m for m in masters if _storage(m) not in own]
        return {"parameters": tensor_bytes(params), "optimizer": tensor_bytes(moments) + tensor_bytes(copies)}

    def state_holders(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """This rank's parameter tensors, optimizer moments and the master weights the optimizer
        steps (engines with a wrapper optimizer find the torch one inside)."""
        return (list(self.model.parameters()), optimizer_moments([self.optimizer]),
                [p for g in self.optimizer.param_groups for p in g["params"]])

    def eval_model(self) -> MultimodalModel | None:
        """A plain one-device MultimodalModel holding the current weights on rank 0 (None on
        other ranks), for sampling during a run. Every rank calls it."""
        import torch.distributed as dist

        weights = self.export_state_dict()
        if self.pcfg.pp > 1:  # the other stages' weights come to rank 0
            gathered = [None] * self.info.world if self.info.is_main else None
            dist.gather_object(weights, gathered, dst=0)
            weights = {k: v for part in gathered or [] for k, v in part.items()}
        if not self.info.is_main:
            return None
        from pipeline.export import model_from_weights

        return model_from_weights(self.cfg.model, weights, self.info.device)


def tensor_bytes(tensors) -> int:
    """Bytes held locally by these tensors (a DTensor's local shard; scalars and non-tensors
    ignored)."""
    import torch

    total = 0
    for t in tensors:
        if torch.is_tensor(t) and t.dim() > 0:
            t = t.to_local() if hasattr(t, "to_local") else t
            total += t.numel() * t.element_size()
    return total


def optimizer_moments(optimizers) -> list[torch.Tensor]:
    """Every state tensor (Adam's exp_avg, exp_avg_sq, ...) of these torch optimizers."""
    return [t for opt in optimizers for state in opt.state.values() for t in state.values()]


def _storage(t: torch.Tensor) -> int:
    return (t.to_local() if hasattr(t, "to_local") else t).untyped_storage().data_ptr()


@dataclass(frozen=True)
class EngineEntry:
    module: str  # where the Engine subclass lives, imported on first use
    requires: str  # the module that must be importable (the engine's own package)
    extra: str  # pip extra that installs it


ENGINES = {
    "native": EngineEntry("pipeline.engines.native.engine:NativeEngine", "torch.distributed", ""),
    "megatron": EngineEntry("pipeline.engines.megatron.engine:MegatronEngine", "megatron.core", "megatron"),
    "deepspeed": EngineEntry("pipeline.engines.deepspeed.engine:DeepSpeedEngine", "deepspeed", "deepspeed"),
}


def get_engine(name: str) -> type[Engine]:
    """The Engine class registered as `name` (train.engine), imported now."""
    entry = ENGINES.get(name)
    if entry is None:
        raise ConfigError(f"train.engine={name!r} is not an engine; choose one of: {', '.join(ENGINES)}")
    if not _importable(entry.requires):
        raise ConfigError(f"train.engine={name!r} needs {entry.requires}, which is not installed: "
                          f"pip install 'nodd[{entry.extra}]' (or train.engine=native)")
    module_name, _, class_name = entry.module.partition(":")
    if not _importable(module_name):
        raise ConfigError(f"train.engine={name!r}: this version of nodd does not include that engine yet "
                          "(docs/architecture.md lists the engines); use train.engine=native")
    return getattr(importlib.import_module(module_name), class_name)


def check_layout(cfg: TrainConfig, world: int) -> ParallelConfig:
    """cfg's parallel layout for `world` processes under its engine, resolved and checked."""
    engine = get_engine(cfg.train.engine)
    engine.check_settings(cfg)
    return engine.check(cfg.parallel, cfg.model, world, cfg.optim.grad_accum)


def _importable(module: str) -> bool:
    """Whether `module` can be imported (a missing parent package counts as no)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False

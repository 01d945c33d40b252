"""optim.ema_decay under DeepSpeed: the weight average (pipeline/engines/ema.py) of the ZeRO
optimizer's fp32 master weights, this rank's partitions of them, updated after every step.

DeepSpeed reads and writes whole parameters through those partitions (safe_get_full_fp32_param
and safe_set_full_fp32_param gather or scatter over the data-parallel ranks), so the average is
read out by putting it in the masters' place for a moment (`applied`), and checkpointed as whole
per-parameter tensors: a checkpoint's average loads under any data-parallel size or ZeRO stage,
like the universal checkpoint it may travel with.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from pipeline.engines.ema import WeightAverage

log = logging.getLogger(__name__)
AVERAGE_DIR = "deepspeed-ema"


def master_partitions(zero_optimizer) -> list[torch.Tensor]:
    """This rank's fp32 master partitions, one flat tensor per parameter group: the attribute
    differs per DeepSpeed optimizer (ZeRO-3; ZeRO-1/2; bf16 ZeRO-1's BF16_Optimizer). ZeRO-3's
    inner optimizer holds them only while it steps."""
    for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        if hasattr(zero_optimizer, attr):
            return list(getattr(zero_optimizer, attr))
    raise TypeError(f"no fp32 master partitions found on {type(zero_optimizer).__name__} (a DeepSpeed version nodd "
                    "was not checked with? pyproject pins the one it was)")


def whole_fp32(named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    """Whole fp32 CPU copies of these parameters from the optimizer's master weights (ZeRO's
    partitions gathered: every data-parallel rank of the stage calls it, in the same order)."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: safe_get_full_fp32_param(p).detach().to("cpu", dtype=torch.float32, copy=True)
            for name, p in named}


class MasterAverage:
    def __init__(self, engine, named: list[tuple[str, torch.nn.Parameter]], decay: float):
        self.named = named  # (MultimodalModel name, parameter) of this rank's model or stage
        masters = master_partitions(engine.optimizer)
        self.average = WeightAverage.over([(str(i), m) for i, m in enumerate(masters)], decay)

    def update(self) -> None:
        self.average.update()

    @contextmanager
    def applied(self):
        """The average in the master weights' place (DeepSpeed's getters read it), then restored."""
        masters = self.average.params
        kept = [m.detach().clone() for m in masters]
        with torch.no_grad():
            torch._foreach_copy_(masters, self.average.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(masters, kept)

    def whole(self) -> dict[str, torch.Tensor]:
        """Each parameter's average, whole (a collective over the data-parallel ranks)."""
        with self.applied():
            return whole_fp32(self.named)

    def save(self, folder: Path, rank: int, keeps: bool) -> None:
        """Every rank calls it; the ranks that `keep` (one per pipeline stage) write their names."""
        weights = self.whole()
        if keeps:
            (folder / AVERAGE_DIR).mkdir(parents=True, exist_ok=True)
            torch.save({"average": weights, "updates": int(self.average.updates)},
                       folder / AVERAGE_DIR / f"rank-{rank:05d}.pt")

    def load(self, folder: Path) -> None:
        """The checkpoint's average into this rank's partitions; one saved without an average
        restarts averaging from the loaded weights (and says so)."""
        from deepspeed.utils import safe_set_full_fp32_param

        files = sorted((folder / AVERAGE_DIR).glob("rank-*.pt"))
        if not files:
            log.warning("%s holds no weight average (saved with optim.ema_decay=0); averaging restarts from its "
                        "weights", folder)
            self.average.restart_from_weights()
            return
        saved = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
        whole = {name: t for part in saved for name, t in part["average"].items()}
        with self.applied():  # set through the masters, then keep what they hold as the average
            for name, p in self.named:
                safe_set_full_fp32_param(p, whole[name].to(p.device))
            with torch.no_grad():
                torch._foreach_copy_(self.average.average, self.average.params)
        self.average.updates.fill_(saved[0]["updates"])

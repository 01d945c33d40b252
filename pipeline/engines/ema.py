"""An exponential moving average of the weights (optim.ema_decay), the copy that sampling,
evaluation and export/ use, as in DiT, MAR and most diffusion training: the raw weights of one
step differ from the next step's by a full learning-rate step, the average does not.

Both engines use it. The average lives next to the parameters in the same layout (native: a
DTensor shard for an FSDP or tensor-parallel parameter, one pipeline stage's parameters on that
stage; megatron: the optimizer's fp32 main weights, a data-parallel slice of each under the
distributed optimizer), in fp32 whatever the compute precision, and is checkpointed with them, so a resumed run averages exactly as an
uninterrupted one. Its decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so the
random initial weights are forgotten within the first steps rather than after 1 / (1 - decay).
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    # foreach kernels refuse a mix of DTensors and plain tensors; the local shards are plain
    return t.to_local() if isinstance(t, DTensor) else t


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self._start([(name, p) for name, p in model.named_parameters() if p.requires_grad], decay)

    @classmethod
    def over(cls, named: list[tuple[str, torch.Tensor]], decay: float) -> "WeightAverage":
        """An average of any named tensors (the megatron engine: its optimizer's fp32 main weights,
        shards of them under the distributed optimizer)."""
        average = cls.__new__(cls)
        average._start(named, decay)
        return average

    def _start(self, named: list[tuple[str, torch.Tensor]], decay: float) -> None:
        self.decay = decay
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        with torch.no_grad():
            self.average = [p.detach().clone() for p in self.params]
        self.updates = torch.zeros((), dtype=torch.int64)  # a tensor: DCP saves and loads it

    def current_decay(self) -> float:
        n = int(self.updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after each optimizer step)."""
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_([_local(a) for a in self.average], [_local(p) for p in self.params], weight)
        self.updates += 1

    @torch.no_grad()
    def restart_from_weights(self) -> None:
        """Start averaging afresh from the current weights (a checkpoint saved without an average)."""
        for a, p in zip(self.average, self.params):
            _local(a).copy_(_local(p))
        self.updates.zero_()

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The average of one of the averaged tensors (by identity)."""
        if not hasattr(self, "_by_id"):
            self._by_id = {id(p): a for p, a in zip(self.params, self.average)}
        return self._by_id[id(tensor)]

    def named_average(self) -> dict[str, torch.Tensor]:
        """Parameter name -> its average, in the parameter's layout."""
        return dict(zip(self.names, self.average))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.named_average(), "_updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, a in self.named_average().items():
            if state[name] is not a:  # DCP loads in place; a plain dict is copied
                _local(a).copy_(_local(state[name]))
        self.updates.copy_(state["_updates"])

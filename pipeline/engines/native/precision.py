"""bf16 compute with fp32 master weights, cast once per step (train.precision = "bf16").

The parameters, the optimizer state, the gradients the optimizer reads, checkpoints and exports
stay fp32. What differs is what the forward and backward compute with:

  FSDP2 (dp > 1)   MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32): each all-gather
                   casts its parameters to bf16; gradients are reduced and kept in fp32
                   (`fsdp_policy`). What a GPU cluster runs.
  otherwise        `CastCopies`: at the start of each step every parameter is cast to bf16 once
                   (Megatron's fp16/bf16 module with fp32 main parameters); forward and backward
                   run on those copies, and after each micro-batch their gradients are added to the
                   fp32 parameters' .grad (fp32 accumulation, as Megatron's main_grad).

Why not autocast: it casts per op, not per step. On the CPU its RMSNorm got a bf16 input and an
fp32 weight, which has no fused kernel, and every op on autocast's fp32 list cast activations back
and forth (issue 13's profile of the matched model: 1,152 copies in 3 steps, 7% of the step). Numerics the model
keeps in fp32 on purpose either way: the losses (`.float()` before cross-entropy and MSE), the
rotary products, the time and position features; RMSNorm and SDPA's softmax accumulate in fp32
inside their bf16 kernels.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module  # what torch.func.functional_call runs on

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def fsdp_policy(precision: str):
    """FSDP2's mixed-precision policy for `precision` (None for fp32)."""
    if precision == "fp32":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=DTYPES[precision], reduce_dtype=torch.float32)


class CastCopies:
    """Low-precision copies of `module`'s parameters for one optimizer step.

        copies.cast()                 # once per step: fresh bf16 copies of the fp32 parameters
        with copies.applied():        # the module computes with the copies
            loss = module(batch).loss
        loss.backward()               # gradients land on the copies
        copies.fold_grads()           # ... and are added, in fp32, to the parameters' .grad
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        self.module, self.dtype = module, dtype
        self.masters = dict(module.named_parameters())  # tied parameters once
        self.copies: dict[str, torch.Tensor] = {}

    def cast(self) -> None:
        self.copies = {name: p.detach().to(self.dtype).requires_grad_(p.requires_grad)
                       for name, p in self.masters.items()}

    @contextmanager
    def applied(self):
        with _reparametrize_module(self.module, self.copies, tie_weights=True):
            yield

    @torch.no_grad()
    def fold_grads(self) -> None:
        for name, master in self.masters.items():
            grad = self.copies[name].grad
            if grad is None:
                continue
            if master.grad is None:
                master.grad = grad.to(master.dtype)
            else:
                master.grad.add_(grad)
            self.copies[name].grad = None

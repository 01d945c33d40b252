"""SwiGLU on megatron's fused fc1 output ([gate | up] along the last axis, per tensor-parallel
shard) without a concatenation in backward.

megatron's unfused path takes `torch.chunk(x, 2, -1)`, whose backward concatenates the two
halves' gradients: on the demo model (1 process, CPU) that cat cost about as much as the SiLU
itself. Here backward writes both halves of one gradient in place. The module fills MLP's
`activation_func` submodule, which megatron builds only under `use_te_activation_func=True`; the
flag's name says Transformer Engine, but the slot takes any module (transformer_config sets it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        activated = F.silu(gate)
        ctx.save_for_backward(gate, up, activated)  # what autograd keeps for silu(gate) * up
        return activated * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        gate, up, activated = ctx.saved_tensors
        grad_x = grad.new_empty(*grad.shape[:-1], 2 * grad.shape[-1])
        grad_gate, grad_up = grad_x.chunk(2, dim=-1)
        torch.mul(grad, activated, out=grad_up)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_x


class SwiGLU(torch.nn.Module):
    """(..., 2 * hidden) [gate | up] -> (..., hidden) silu(gate) * up."""

    def __init__(self, config=None):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwiGLU.apply(x)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None) -> dict:
        return {}  # MLP asks every submodule for its checkpoint entries; an activation has none

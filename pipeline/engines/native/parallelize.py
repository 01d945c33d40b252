"""parallelize(model, mesh, cfg): tensor parallel, then FSDP2, applied to a plain MultimodalModel
(torchtitan's order). The model code knows nothing about it.

Tensor parallel (DTensor plans): per block, the fused q|k|v and gate|up projections are split
column-wise and the output projections row-wise, so each rank computes whole head groups and
MLP units and one all-reduce per sublayer joins them. The layouts in model/transformer.py are
grouped/interleaved for exactly this. qk-norm weights live inside the split region, so their
gradients are partial per rank: `sync_partial_grads` sums them over the tensor-parallel group
after backward (an explicit call, not a tensor hook: FSDP2 swaps the parameter objects, and a
hook on the old ones silently never fires - Adam then hides the halved gradient almost entirely).
Embeddings, adapters and heads stay replicated on the tensor-parallel ranks.

FSDP2: `fully_shard` per block, then the root, over the data-parallel mesh (HSDP when
dp_replicate > 1). With pipeline stages the root is the StageModule the schedule calls.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from pipeline.engines.native.parallel import ParallelConfig


def parallelize(model: nn.Module, mesh, cfg: ParallelConfig, mixed_precision: torch.dtype | None = None,
                root: nn.Module | None = None) -> nn.Module:
    """`root`: the module whose forward runs each step, when it is not `model` itself (a
    pipeline StageModule around this rank's part of the model)."""
    if cfg.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    if cfg.dp > 1:
        apply_fsdp(model, mesh, cfg, mixed_precision, root or model)
    return model


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {"attention.wqkv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "ffn.w13": ColwiseParallel(), "ffn.w2": RowwiseParallel()}
    for block in model.backbone.layers.values():
        parallelize_module(block, tp_mesh, plan)


TP_PARTIAL = ("attention.q_norm.weight", "attention.k_norm.weight")


def sync_partial_grads(model: nn.Module, mesh, cfg: ParallelConfig) -> None:
    """Sum the gradients that tensor parallelism leaves partial (qk-norm weights) over the
    tensor-parallel ranks. Call after backward, before clipping and the optimizer step."""
    if cfg.tp == 1:
        return
    group = mesh["tp"].get_group()
    for name, param in model.named_parameters():
        if name.endswith(TP_PARTIAL) and param.grad is not None:
            grad = param.grad
            local = grad.to_local() if hasattr(grad, "to_local") else grad  # FSDP: this rank's dp shard
            dist.all_reduce(local, group=group)


def apply_fsdp(model: nn.Module, mesh, cfg: ParallelConfig, mixed_precision: torch.dtype | None,
               root: nn.Module) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dp_mesh = mesh["dp_replicate", "dp_shard"] if cfg.dp_replicate > 1 else mesh["dp_shard"]
    policy = MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32) \
        if mixed_precision is not None else MixedPrecisionPolicy()
    for block in model.backbone.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=policy)
    fully_shard(root, mesh=dp_mesh, mp_policy=policy)  # embeddings, adapters, heads: gathered around root.forward

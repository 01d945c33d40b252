"""parallelize(model, mesh, ...): tensor parallel, activation checkpointing, compile, then FSDP2,
applied to a plain MultimodalModel (torchtitan's order; on the meta device, before any weight
exists). The model code knows nothing about it. `build_mesh` turns the resolved degrees into a
named DeviceMesh (no process-group globals).

Mesh dimensions, outermost first: pp, dp_replicate, dp_shard, tp (tensor parallel innermost: it
talks most, so its ranks are neighbours, on one node where possible).

Tensor parallel (DTensor plans): per block, the fused q|k|v, the gate and the up projections are
split column-wise and the output projections row-wise, so each rank computes whole head groups and
MLP units and one all-reduce per sublayer joins them. The layouts in model/transformer.py are
grouped per key/value head for exactly this. qk-norm weights live inside the split region, so
their gradients are partial per rank: `sync_partial_grads` sums them over the tensor-parallel group
after backward (an explicit call, not a tensor hook: FSDP2 swaps the parameter objects, and a
hook on the old ones silently never fires - Adam then hides the halved gradient almost entirely).
Embeddings, adapters and heads stay replicated on the tensor-parallel ranks.

FSDP2: `fully_shard` per block, then the root, over the data-parallel mesh (HSDP when
dp_replicate > 1); in bf16 with MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32). With
pipeline stages the root is the StageModule the schedule calls.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

from pipeline.engines.native.precision import fsdp_policy
from pipeline.engines.parallel import ParallelConfig


def build_mesh(cfg: ParallelConfig, device_type: str):
    """A DeviceMesh with every dimension named (size-1 ones included, so code can always ask
    for mesh["tp"]); plus the flattened "dp" dimension for data loading and loss averaging."""
    from torch.distributed.device_mesh import init_device_mesh

    names = ("pp", "dp_replicate", "dp_shard", "tp")
    shape = (cfg.pp, cfg.dp_replicate, cfg.dp_shard, cfg.tp)
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=names)
    mesh["dp_replicate", "dp_shard"]._flatten("dp")
    return mesh


def parallelize(model: nn.Module, mesh, cfg: ParallelConfig, root: nn.Module | None = None,
                activation_checkpointing: bool = False, compile_blocks: bool = False,
                reshard_after_forward: bool = True, precision: str = "fp32") -> nn.Module:
    """`root`: the module whose forward runs each step, when it is not `model` itself (a
    pipeline StageModule around this rank's part of the model). `mesh` is None in one process."""
    if cfg.tp > 1:
        apply_tensor_parallel(model, mesh["tp"])
    # recompute each block in backward instead of keeping its activations: ~1/3 more compute
    model.backbone.checkpoint_blocks = activation_checkpointing
    if compile_blocks:
        for block in model.backbone.layers.values():
            block.compile()
    if cfg.dp > 1:
        apply_fsdp(model, mesh, cfg, root or model, reshard_after_forward, fsdp_policy(precision))
    return model


def apply_tensor_parallel(model: nn.Module, tp_mesh) -> None:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {"attention.wqkv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "ffn.w1": ColwiseParallel(), "ffn.w3": ColwiseParallel(), "ffn.w2": RowwiseParallel()}
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


def apply_fsdp(model: nn.Module, mesh, cfg: ParallelConfig, root: nn.Module, reshard_after_forward: bool,
               mp_policy=None) -> None:
    """`mp_policy`: FSDP2's MixedPrecisionPolicy (bf16 compute, fp32 reduce) or None (fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp_policy = mp_policy or MixedPrecisionPolicy()  # the default: no casts
    dp_mesh = mesh["dp_replicate", "dp_shard"] if cfg.dp_replicate > 1 else mesh["dp_shard"]
    for block in model.backbone.layers.values():
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward, mp_policy=mp_policy)
    # embeddings, adapters, heads: gathered around root.forward (and kept for backward: torchtitan's choice)
    fully_shard(root, mesh=dp_mesh, reshard_after_forward=False, mp_policy=mp_policy)

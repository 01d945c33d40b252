"""The native engine's AdamW and a gradient-norm clip that works across device meshes (the
learning rate comes from the trainer each step: OptimConfig.lr_at)."""

from __future__ import annotations

import torch

from pipeline.train.config import OptimConfig


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, distributed: bool) -> torch.optim.Optimizer:
    """Weight decay on matrices only (not norms, biases, embeddings' 1-D scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach fails on a mix of DTensor and plain parameters (torch 2.13: "got mixed torch.Tensor and DTensor")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False if distributed else None)


@torch.no_grad()
def clip_grad_norm(parameters, max_norm: float, stage_group=None, device: torch.device | None = None) -> float:
    """Global L2 norm over every gradient, whatever mesh it lives on: a DTensor's norm is reduced
    over its own mesh, plain (replicated) gradients count once, and with pipeline stages
    (`stage_group`: the "pp" process group) each stage's sum of squares is added up.
    `torch.nn.utils.clip_grad_norm_` refuses parameters on different meshes (2-D dp x tp)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64)
    for g in grads:
        sq = g.float().pow(2).sum()
        if hasattr(sq, "full_tensor"):
            sq = sq.full_tensor()
        total += sq.double().cpu()
    if stage_group is not None:
        total = total.to(device or "cpu")
        torch.distributed.all_reduce(total, group=stage_group)
        total = total.cpu()
    norm = float(total.sqrt())
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm

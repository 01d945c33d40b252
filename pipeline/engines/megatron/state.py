"""The megatron engine's checkpoint payload: every rank's own model and optimizer state, and the
layout they were written under.

    step-N/megatron.json             tp, pp, dp, world, distributed_optimizer, precision (rank 0)
    step-N/megatron-rank-00003.pt    rank 3's stage weights (its layers, its tensor-parallel shard)
                                     and optimizer state: with the distributed optimizer, its shard
                                     of the main parameters and Adam moments in megatron's
                                     bucket layout (`get_parameter_state_dp_reshardable`: no
                                     gathers, exact)

Such a payload resumes exactly on the layout that wrote it. Another layout is refused with a
message: its export/ (MultimodalModel names, whole tensors) is what moves between layouts and
engines. megatron's dist_checkpointing, which reshards, calls CUDA in places this CPU layer does
not cover (docs/engines.md); it is the next step for this payload.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.errors import DataError

LAYOUT_FILE = "megatron.json"


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _rank_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"megatron-rank-{rank:05d}.pt"


def _with_padding_flags(state: dict) -> dict:
    """megatron-core 0.16.1's load_parameter_state_from_dp_reshardable reads a "padding" flag on
    every parameter entry that get_parameter_state_dp_reshardable does not write (its
    dist_checkpointing path adds it): mark every entry as a real parameter."""
    for key, by_dtype in state.items():
        if isinstance(key, int):
            for buckets in by_dtype.values():
                for bucket in buckets:
                    for entry in bucket:
                        entry.setdefault("padding", False)
    return state


@torch.no_grad()
def main_weights(optimizer, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """The fp32 main weights behind `params` (whole tensors, every data-parallel rank calls this):
    fp32 parameters are their own; megatron's Float16Optimizer keeps an fp32 copy on each bf16
    parameter (`main_param`); the distributed optimizer keeps a slice of it on each data-parallel
    rank, which are summed over the group here (a bf16 parameter is the rounded copy: exporting
    it would lose what the optimizer learned below bf16's resolution)."""
    import torch.distributed as dist
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    sharded = [opt for opt in _optimizers(optimizer) if isinstance(opt, DistributedOptimizer)]
    out = []
    for p in params:
        if p.dtype == torch.float32:
            out.append(p.detach())
        elif not sharded:
            out.append(p.main_param.detach())
        else:
            whole = torch.zeros(p.numel(), dtype=torch.float32, device=p.device)
            for opt in sharded:
                if p in opt.model_param_group_index_map:  # this rank owns a slice of it
                    owned = opt._get_model_param_range_map(p)["param"]
                    whole[owned.start:owned.end] = opt._get_main_param_and_optimizer_states(p)["param"]
            dist.all_reduce(whole, group=sharded[0].data_parallel_group)
            out.append(whole.view(p.shape))
    return out


@torch.no_grad()
def save_state(folder: Path, rank: int, stage: torch.nn.Module, optimizer, layout: dict) -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    entries = []
    for opt in _optimizers(optimizer):
        entry = {"state_dict": opt.state_dict()}
        if isinstance(opt, DistributedOptimizer):
            entry["param_state"] = _with_padding_flags(opt.get_parameter_state_dp_reshardable())
        entries.append(entry)
    torch.save({"model": stage.state_dict(), "optimizers": entries}, _rank_file(folder, rank))
    if rank == 0:
        (Path(folder) / LAYOUT_FILE).write_text(json.dumps(layout, indent=2), encoding="utf-8")


@torch.no_grad()  # megatron copies into views of its parameter buffers
def load_state(folder: Path, rank: int, stage: torch.nn.Module, optimizer, layout: dict) -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    folder = Path(folder)
    try:
        saved = json.loads((folder / LAYOUT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder / LAYOUT_FILE} cannot be read ({exc}); delete {folder} to resume from the "
                        "checkpoint before it, or start a new run_dir") from None
    saved.setdefault("precision", "fp32")  # written before bf16 existed in this engine
    if saved != layout:
        differs = ", ".join(f"{k} {saved.get(k)} -> {layout.get(k)}" for k in layout if saved.get(k) != layout.get(k))
        raise DataError(f"{folder} was written by the megatron engine under another layout ({differs}); its "
                        "payload resumes only on the layout that wrote it. Resume with that layout, or train a "
                        f"new run from its weights ({folder / 'export'})")
    payload = torch.load(_rank_file(folder, rank), weights_only=False)
    stage.load_state_dict(payload["model"], strict=True)
    for opt, entry in zip(_optimizers(optimizer), payload["optimizers"], strict=True):
        if isinstance(opt, DistributedOptimizer):
            opt.load_state_dict(entry["state_dict"])
            # megatron-core 0.16.1 (torch AdamW fallback) hands every parameter the same `step`
            # tensor; torch's AdamW then adds 1 to that one counter once per parameter a step,
            # and the bias correction after a resume is wrong. One counter per parameter:
            for state in opt.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].clone()
            opt.load_parameter_state_from_dp_reshardable(entry["param_state"])
        else:
            opt.load_state_dict(entry["state_dict"])

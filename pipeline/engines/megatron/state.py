"""The megatron engine's checkpoint payload: megatron-core's dist_checkpointing, which loads
under any tensor / pipeline / data-parallel layout, and the layout it was written under.

    step-N/megatron.json        format, tp, pp, dp, world, distributed_optimizer, precision (rank 0)
    step-N/megatron/            dist_checkpointing (torch_dist): every parameter and its Adam
                                moments as whole tensors in layout-free keys (stage.py's
                                MegatronStage.sharded_state_dict; the distributed optimizer's
                                state in its `fully_reshardable` form, gathered over the
                                data-parallel group on save), each rank writing its own shards

Resuming on the layout that wrote it gives the uninterrupted run exactly; on another layout the
same weights and optimizer state are resliced (training goes on to float rounding, the data
order restarts at the next epoch, as in the native engine). The precision must match: a bf16
payload's fp32 main weights have no place in an fp32 run's optimizer (start one from export/).

Format 1 (written before dist_checkpointing; `megatron-rank-NNNNN.pt` per rank, no "format" in
megatron.json) still resumes on its own layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from core.errors import DataError

LAYOUT_FILE = "megatron.json"
CHECKPOINT_DIR = "megatron"
FORMAT = 2  # 1: per-rank torch.save payloads, same layout only
# the distributed optimizer's state as whole tensors in model space, the format that reshards tp/pp
SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _rank_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"megatron-rank-{rank:05d}.pt"


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


def _sharded(stage: torch.nn.Module, optimizer, loading: bool) -> dict:
    model = stage.sharded_state_dict()
    return {"model": model, "optimizer": optimizer.sharded_state_dict(model, is_loading=loading, metadata=SHARDING)}


@torch.no_grad()
def save_state(folder: Path, rank: int, stage: torch.nn.Module, optimizer, layout: dict) -> None:
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    target = Path(folder) / CHECKPOINT_DIR
    if rank == 0:
        target.mkdir()
        (Path(folder) / LAYOUT_FILE).write_text(json.dumps({"format": FORMAT, **layout}, indent=2), encoding="utf-8")
    dist.barrier()
    dist_checkpointing.save(_sharded(stage, optimizer, loading=False), str(target))


@torch.no_grad()  # megatron copies into views of its parameter buffers
def load_state(folder: Path, rank: int, stage: torch.nn.Module, optimizer, layout: dict) -> None:
    from megatron.core import dist_checkpointing

    folder = Path(folder)
    try:
        saved = json.loads((folder / LAYOUT_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder / LAYOUT_FILE} cannot be read ({exc}); delete {folder} to resume from the "
                        "checkpoint before it, or start a new run_dir") from None
    saved.setdefault("precision", "fp32")  # written before bf16 existed in this engine
    if saved["precision"] != layout["precision"]:
        raise DataError(f"{folder} was trained in train.precision={saved['precision']} (precision "
                        f"{saved['precision']} -> {layout['precision']}); resume with that precision, or train a "
                        f"new run from its weights (train.init_from={folder / 'export'})")
    if saved.pop("format", 1) == 1:
        _load_rank_files(folder, rank, stage, optimizer, saved, layout)
        return
    for opt in _optimizers(optimizer):
        _prime_adam_state(opt)
    loaded = dist_checkpointing.load(_sharded(stage, optimizer, loading=True), str(folder / CHECKPOINT_DIR))
    missing, unexpected = stage.load_state_dict(loaded["model"], strict=False)
    tied = {"part.lm_head.weight"} if stage.part.cfg.tie_embeddings else set()
    if unexpected or set(missing) - tied:
        raise DataError(f"{folder / CHECKPOINT_DIR} does not match this model (missing {sorted(set(missing) - tied)}, "
                        f"unexpected {sorted(unexpected)})")
    chained = _optimizers(optimizer)
    states = [loaded["optimizer"]] if len(chained) == 1 else [v for _, v in sorted(loaded["optimizer"].items())]
    for opt, state in zip(chained, states, strict=True):
        _load_optimizer(opt, state)


def _load_optimizer(opt, state: dict) -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if not isinstance(opt, DistributedOptimizer):
        opt.load_state_dict(state)
        _own_step_counters(opt)
        return
    # megatron-core 0.16.1, torch AdamW fallback: load_parameter_state_from_fully_reshardable
    # copies every key of a parameter's Adam state from the checkpoint, `step` included, which
    # its save leaves out (KeyError 'step'). The counters come from the param groups instead:
    # load those, set the sharded tensors aside from the counters, then put them back.
    param_state = state.pop("param_state")
    opt.load_state_dict(state)
    inner = opt.optimizer.state
    steps = {p: inner[p].pop("step") for p in list(inner) if "step" in inner[p]}
    opt.load_parameter_state_from_fully_reshardable(param_state)
    for p, step in steps.items():
        inner[p]["step"] = step.clone()  # one counter each (_own_step_counters)


def _prime_adam_state(opt) -> None:
    """Adam state (zero moments, step 0) for every parameter before a load. Without Apex or
    Transformer Engine megatron-core 0.16.1 falls back to torch's AdamW, which creates its state
    at the first step; the distributed optimizer's state_dict, which its loading path calls
    first, asserts one common `step` over the (then empty) state."""
    inner = getattr(opt, "optimizer", None)
    if not isinstance(inner, torch.optim.Optimizer):
        return
    for group in inner.param_groups:
        for p in group["params"]:
            if not inner.state[p]:
                inner.state[p] = {"step": torch.zeros((), dtype=torch.float32), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}


def _own_step_counters(opt) -> None:
    """megatron-core 0.16.1 (torch AdamW fallback) hands every parameter the same `step` tensor
    on load; torch's AdamW then adds 1 to that one counter once per parameter a step, and the
    bias correction after a resume is wrong. One counter per parameter:"""
    inner = getattr(opt, "optimizer", None)
    for state in getattr(inner, "state", {}).values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def _load_rank_files(folder: Path, rank: int, stage: torch.nn.Module, optimizer, saved: dict, layout: dict) -> None:
    """Format 1: this rank's own torch.save payload, on the layout that wrote it only."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if saved != layout:
        differs = ", ".join(f"{k} {saved.get(k)} -> {layout.get(k)}" for k in layout if saved.get(k) != layout.get(k))
        raise DataError(f"{folder} was written by an older nodd (megatron payload format 1) under another layout "
                        f"({differs}); it resumes only on the layout that wrote it. Resume with that layout, or "
                        f"train a new run from its weights (train.init_from={folder / 'export'})")
    payload = torch.load(_rank_file(folder, rank), weights_only=False)
    stage.load_state_dict(payload["model"], strict=True)
    for opt, entry in zip(_optimizers(optimizer), payload["optimizers"], strict=True):
        opt.load_state_dict(entry["state_dict"])
        if isinstance(opt, DistributedOptimizer):
            _own_step_counters(opt)
            opt.load_parameter_state_from_dp_reshardable(entry["param_state"])

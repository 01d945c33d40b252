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
import logging
from pathlib import Path

import torch

from core.errors import DataError
from pipeline.train.checkpoint import layout_changes, read_layout_file

log = logging.getLogger(__name__)
LAYOUT_FILE = "megatron.json"
CHECKPOINT_DIR = "megatron"
FORMAT = 2  # 1: per-rank torch.save payloads, same layout only
MOMENTS = ("exp_avg", "exp_avg_sq")


def _optimizers(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def _rank_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"megatron-rank-{rank:05d}.pt"


def _owner(optimizer):
    """The distributed optimizer (it holds a slice of every parameter's state), or None."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    return next((opt for opt in _optimizers(optimizer) if isinstance(opt, DistributedOptimizer)), None)


def main_tensors(optimizer) -> list[torch.Tensor]:
    """The tensors megatron's optimizer updates: fp32 parameters, the fp32 main copies of bf16
    ones, or, under the distributed optimizer, this rank's slices of them (what the weight
    average follows)."""
    return [q for opt in _optimizers(optimizer) for group in opt.optimizer.param_groups for q in group["params"]]


def _main_slice(sharded, p: torch.nn.Parameter) -> tuple[torch.Tensor, slice] | None:
    """The distributed optimizer's main tensor for p on this rank and where it sits in p, or None."""
    if p not in sharded.model_param_group_index_map:
        return None
    owned = sharded._get_model_param_range_map(p)["param"]
    group, order = sharded.model_param_group_index_map[p]
    return sharded.optimizer.param_groups[group]["params"][order], slice(owned.start, owned.end)


def _gathered(sharded, p: torch.nn.Parameter, keys: tuple[str, ...], average=None) -> dict[str, torch.Tensor]:
    """Whole fp32 tensors of p's shape from the distributed optimizer's slices ("main": the main
    weights, "ema": their average), summed over the data-parallel group: every data-parallel
    rank calls it."""
    import torch.distributed as dist

    flat = torch.zeros(len(keys), p.numel(), dtype=torch.float32, device=p.device)
    mine = _main_slice(sharded, p)
    if mine is not None:  # this rank owns a slice of it
        main, where = mine
        held = {**sharded._get_main_param_and_optimizer_states(p), "main": main}
        if average is not None:
            held["ema"] = average.of(main)
        for row, k in enumerate(keys):
            if k in held:  # no moments before the first step
                flat[row, where] = held[k]
    dist.all_reduce(flat, group=sharded.data_parallel_group)
    return {k: flat[row].view(p.shape) for row, k in enumerate(keys)}


@torch.no_grad()
def main_weights(optimizer, params: list[torch.nn.Parameter], average=None) -> list[torch.Tensor]:
    """The fp32 main weights behind `params`, or with `average` their weight average (whole
    tensors, every data-parallel rank calls this): fp32 parameters are their own; megatron's
    Float16Optimizer keeps an fp32 copy on each bf16 parameter (`main_param`); the distributed
    optimizer keeps a slice of it on each data-parallel rank (a bf16 parameter is the rounded
    copy: exporting it would lose what the optimizer learned below bf16's resolution)."""
    sharded = _owner(optimizer)
    if sharded is not None:
        key = "main" if average is None else "ema"
        return [p.detach() if p.dtype == torch.float32 and average is None else _gathered(sharded, p, (key,), average)[key]
                for p in params]
    mains = [getattr(p, "main_param", p) for p in params]
    return [m.detach() for m in mains] if average is None else [average.of(m) for m in mains]


def _inner_state(optimizer, p: torch.nn.Parameter) -> dict:
    """torch AdamW's state of p in a plain megatron optimizer (keyed by its fp32 main copy in bf16)."""
    main = getattr(p, "main_param", p)
    for opt in _optimizers(optimizer):
        if main in opt.optimizer.state:
            return opt.optimizer.state[main]
    return {}


@torch.no_grad()
def optimizer_state(optimizer, p: torch.nn.Parameter, average=None) -> dict[str, torch.Tensor]:
    """p's Adam moments (and, for a bf16 p, its fp32 main weights as "main"; with `average`, the
    weight average as "ema") as whole fp32 tensors of p's shape; every data-parallel rank calls it."""
    keys = MOMENTS if p.dtype == torch.float32 else (*MOMENTS, "main")
    keys = keys if average is None else (*keys, "ema")
    sharded = _owner(optimizer)
    if sharded is not None:
        return _gathered(sharded, p, keys, average)
    state = _inner_state(optimizer, p)
    main = getattr(p, "main_param", p)
    out = {k: state[k] if k in state else torch.zeros(p.shape) for k in MOMENTS}
    if "main" in keys:
        out["main"] = main.detach()
    if average is not None:
        out["ema"] = average.of(main)
    return out


@torch.no_grad()
def set_optimizer_state(optimizer, p: torch.nn.Parameter, state: dict[str, torch.Tensor], step: float,
                        average=None) -> None:
    """The inverse of optimizer_state: whole tensors of p's shape -> the optimizer's own layout."""
    sharded = _owner(optimizer)
    counter = torch.tensor(step, dtype=torch.float32)
    for opt in _optimizers(optimizer):
        for group in opt.optimizer.param_groups:
            if "step" in group:  # Apex / TE FusedAdam count in the group
                group["step"] = int(step)
    if sharded is None:
        main, where = getattr(p, "main_param", p), slice(None)
        if "main" in state:
            main.copy_(state["main"])
        opt = next(o for o in _optimizers(optimizer) if any(main is q for g in o.optimizer.param_groups for q in g["params"]))
        opt.optimizer.state[main] = {"step": counter, **{k: state[k].to(main.dtype).clone() for k in MOMENTS}}
    else:
        mine = _main_slice(sharded, p)
        if mine is None:
            return
        main, where = mine
        sharded.optimizer.state[main] = {"step": counter, **{k: state[k].flatten()[where].clone() for k in MOMENTS}}
        main.copy_((state["main"] if "main" in state else p.detach().float()).flatten()[where])
    if average is not None and "ema" in state:
        average.of(main).copy_(state["ema"].flatten()[where].view_as(main))


def _sharded(chunks: list[torch.nn.Module], optimizer, loading: bool, average=None) -> tuple[dict, list[dict]]:
    """(what dist_checkpointing saves or loads, for each model chunk: param name -> its
    optimizer-state keys). The optimizer part is layout-free like the model's: each parameter's
    moments (bf16 main weights, weight average) as whole tensors under the parameter's own sharding, so tp /
    pp / dp, the virtual stages and the distributed optimizer may all change between save and
    load (megatron's own optimizer formats tie a checkpoint to one optimizer class, and its
    fully_reshardable load drops the torch-AdamW step counters, megatron-core 0.16.1). The
    dictionary keys are this rank's; the checkpoint's keys are the entries' global ones."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor

    models = [chunk.sharded_state_dict() for chunk in chunks]
    by_tensor = {id(entry.data): entry for entry in nested_values(models) if hasattr(entry, "data")}
    entries, keys = {}, []
    for v, chunk in enumerate(chunks):
        keys.append({})
        for name, p in chunk.named_parameters():
            state = optimizer_state(optimizer, p, average)
            if loading:
                state = {k: torch.zeros_like(t) for k, t in state.items()}
            keys[v][name] = {k: f"{k}.{v}.{name}" for k in state}
            for k, tensor in state.items():
                entries[keys[v][name][k]] = make_sharded_optimizer_tensor(by_tensor[id(p)], tensor,
                                                                          prefix=f"optimizer.{k}")
    common = {"step": _step(optimizer), "ema_updates": int(average.updates) if average is not None else 0}
    return {"model": models, "optimizer": entries, **common}, keys


def _step(optimizer) -> float:
    """The optimizer steps taken (AdamW's bias-correction counter, one value for every parameter)."""
    for opt in _optimizers(optimizer):
        for state in opt.optimizer.state.values():
            if torch.is_tensor(state.get("step")):
                return float(state["step"])  # torch's AdamW (megatron's fallback without Apex / TE)
        for group in opt.optimizer.param_groups:
            if "step" in group:
                return float(group["step"])  # Apex / TE FusedAdam (GPU; not run here)
    return 0.0


@torch.no_grad()
def save_state(folder: Path, rank: int, chunks: list[torch.nn.Module], optimizer, layout: dict,
               average=None) -> None:
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    target = Path(folder) / CHECKPOINT_DIR
    if rank == 0:
        target.mkdir()
        record = {"format": FORMAT, **layout, "weight_average": average is not None}
        (Path(folder) / LAYOUT_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    dist.barrier()
    dist_checkpointing.save(_sharded(chunks, optimizer, loading=False, average=average)[0], str(target))


@torch.no_grad()  # megatron copies into views of its parameter buffers
def load_state(folder: Path, rank: int, chunks: list[torch.nn.Module], optimizer, layout: dict,
               average=None) -> None:
    from megatron.core import dist_checkpointing

    folder = Path(folder)
    saved = read_layout_file(folder / LAYOUT_FILE)
    saved.setdefault("precision", "fp32")  # written before bf16 existed in this engine
    saved.setdefault("virtual_stages", 1)  # and before the interleaved schedule
    saved_average = saved.pop("weight_average", False)
    if saved["precision"] != layout["precision"]:
        raise DataError(f"{folder} was trained in train.precision={saved['precision']} (precision "
                        f"{saved['precision']} -> {layout['precision']}); resume with that precision, or train a "
                        f"new run from its weights (train.init_from={folder / 'export'})")
    if saved.pop("format", 1) == 1:
        _load_rank_files(folder, rank, chunks[0], optimizer, saved, layout)  # one chunk then
        _restart_average(average, folder)
        return
    loads_average = average if saved_average else None
    request, keys = _sharded(chunks, optimizer, loading=True, average=loads_average)
    loaded = dist_checkpointing.load(request, str(folder / CHECKPOINT_DIR))
    tied = {"part.lm_head.weight"} if chunks[0].part.cfg.tie_embeddings else set()
    for v, chunk in enumerate(chunks):
        missing, unexpected = chunk.load_state_dict(loaded["model"][v], strict=False)
        if unexpected or set(missing) - tied:
            raise DataError(f"{folder / CHECKPOINT_DIR} does not match this model (missing "
                            f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})")
        for name, p in chunk.named_parameters():
            set_optimizer_state(optimizer, p, {k: loaded["optimizer"][key] for k, key in keys[v][name].items()},
                                loaded["step"], loads_average)
    if loads_average is not None:
        average.updates.fill_(loaded["ema_updates"])
    elif average is not None:
        _restart_average(average, folder)


def _restart_average(average, folder: Path) -> None:
    """A payload saved without an average (optim.ema_decay was 0): average from its weights on."""
    if average is not None:
        log.warning("%s holds no weight average; optim.ema_decay averages from its weights on", folder)
        average.restart_from_weights()


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
        differs = layout_changes(saved, layout)
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

"""Engine parity workers (spawned with gloo on CPU) and their one-process reference.

A layout trains a tiny model for a few steps of MICRO micro-batches each through
`Engine.train_step`; every data-parallel rank gets its own batches, every tensor-parallel rank
and pipeline stage of it the same ones and the same noise seeds. The reference is the native
engine in one process on the same weights, stepping once per step over every data-parallel
rank's micro-batches: the mean of their losses and gradients is what a data-parallel step
optimises. An engine joins by registering in pipeline/engines/base.py and adding rows to
tests/pipeline/engines/test_parity.py; nothing here knows which engine runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import torch

from model.batch import Document, Packer
from model.config import ModelConfig
from pipeline.engines.parallel import ParallelConfig
from pipeline.train.config import LoopConfig, OptimConfig, TrainConfig
from support.model_helpers import fsq_pyramid

MICRO = 2  # micro-batches per optimizer step (the pipeline schedule needs >= pp of them)
ROWS, SEQ_LEN = 2, 64


def seq_len(cfg: ModelConfig) -> int:
    """Rows of SEQ_LEN tokens; next-scale images take 21 tokens instead of 16, so 80."""
    return 80 if cfg.next_scale_images else SEQ_LEN
LR = 1e-3
# bf16 runs agree with one bf16 process to bf16's resolution, not 1e-5 (sums in another order)
BF16_TOLERANCE = 2e-2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_of(step: int, micro: int, dp_rank: int) -> int:
    """The same noise every step, like the same batches: only the weights change, so the loss falls."""
    return 100 * micro + dp_rank


def tiny_cfg(mode: str = "transfusion") -> ModelConfig:
    return ModelConfig(mode=mode, width=64, depth=2, heads=4, kv_heads=2, latent_channels=4, latent_size=4,
                       head_width=32, head_depth=1, codebook_size=16 if mode == "discrete" else 0, attention="sdpa")


def train_config(mode: str, layout: dict, engine: str = "native", microbatches: int = MICRO,
                 model_options: dict | None = None, precision: str = "fp32",
                 settings: dict | None = None) -> TrainConfig:
    """`settings`: engine sections' fields by dotted name, e.g. {"megatron.virtual_stages": 2}."""
    model = dataclasses.replace(tiny_cfg(mode), **(model_options or {}))
    model.validate()  # as a loaded config is: model.init_from's shapes are filled in here
    cfg = TrainConfig(model=model, parallel=ParallelConfig(**layout), optim=OptimConfig(lr=LR, grad_accum=microbatches),
                      train=LoopConfig(engine=engine, seed=0, precision=precision))
    for key, value in (settings or {}).items():
        section, name = key.split(".")
        setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **{name: value}))
    cfg.data.batch_rows, cfg.data.seq_len = ROWS, seq_len(model)  # the pipeline schedule's fixed shapes
    return cfg


def with_settings(engine: str, layout: dict | None = None, **settings) -> TrainConfig:
    """A tiny transfusion config for `engine` with fields set by section__name (optim__ema_decay=0.9)."""
    cfg = train_config("transfusion", layout or {}, engine)
    for key, value in settings.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def batches(cfg: ModelConfig, dp_rank: int, steps: int) -> list[list]:
    """MICRO packed batches of fixed shape (ROWS, SEQ_LEN), as the training loader makes, the same
    ones every step (so the loss must fall: the run visibly trains)."""
    g = torch.Generator().manual_seed(100 + dp_rank)
    packer = Packer(cfg, 257, 258, 256)
    out = []
    for _ in range(MICRO):
        docs = []
        for task in ("generate", "understand", "text", "generate"):
            caption = torch.randint(0, 256, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
            image = ({"codes": torch.randint(0, 16, (4, 4), generator=g)} if cfg.mode == "discrete"
                     else {"latent": torch.randn(4, 4, 4, generator=g)})
            if cfg.mode == "discrete" and cfg.next_scale_images:
                image["scale_codes"] = fsq_pyramid(image["codes"], cfg)
            docs.append(Document(task, caption, **(image if task != "text" else {})))
        out.append(packer.collate([docs[:2], docs[2:]], seq_len(cfg), generator=g))
    return [out] * steps


def reference(layout: dict, world: int, steps: int, mode: str, model_options: dict | None = None,
              precision: str = "fp32", resumed_as: tuple[dict, int] | None = None, resumed_at: int = 0,
              settings: dict | None = None) -> dict:
    """One-process native run over all data-parallel ranks' micro-batches: losses, state bytes
    and the exported weights (`settings` as in train_config, e.g. {"optim.ema_decay": 0.9}).
    `resumed_as=(layout, world)`: from step `resumed_at` on, the data-parallel ranks of that
    layout (what a run resumed there trains on)."""
    from pipeline.distributed import DistInfo
    from pipeline.engines.native.engine import NativeEngine

    dps = [ParallelConfig(**lay).resolved(w).dp for lay, w in [(layout, world), resumed_as or (layout, world)]]
    cfg = train_config(mode, {}, microbatches=max(dps) * MICRO, model_options=model_options, precision=precision,
                       settings=settings)
    engine = NativeEngine(cfg, DistInfo(0, 1, torch.device("cpu")))
    data = [batches(cfg.model, r, steps) for r in range(max(dps))]
    results, evaluated = [], None
    for step in range(steps):
        dp = dps[1] if resumed_as and step >= resumed_at else dps[0]
        micro = [b for r in range(dp) for b in data[r][step]]
        seeds = [seed_of(step, m, r) for r in range(dp) for m in range(MICRO)]
        if step == steps - 1:
            evaluated = engine.eval_step(micro, seeds)
        results.append(engine.train_step(micro, seeds, LR))
    return {"losses": [r.losses["loss"] for r in results], "grad_norms": [r.grad_norm for r in results],
            "held": engine.held_state_bytes(), "weights": engine.export_state_dict(), "eval": evaluated}


def _engine_in_process(rank: int, world: int, port: int, engine_name: str, cfg: TrainConfig):
    """This spawned process joined to the gloo group (one thread), and the engine built on it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from pipeline.distributed import init_distributed
    from pipeline.engines.base import get_engine

    return get_engine(engine_name)(cfg, init_distributed("cpu"))


def _steps(engine, first: int, last: int, evaluated: dict | None = None) -> list:
    """Train steps first..last-1; with `evaluated` (a dict), also `eval_step` on the last step's
    batches just before it trains, into `evaluated`: it must equal that step's training loss
    (same weights, data and seeds) and leave the step that follows unchanged."""
    data = batches(engine.cfg.model, engine.dp_rank, last)
    results = []
    for step in range(first, last):
        seeds = [seed_of(step, m, engine.dp_rank) for m in range(MICRO)]
        if evaluated is not None and step == last - 1:
            evaluated.update(engine.eval_step(data[step], seeds))
        results.append(engine.train_step(data[step], seeds, LR))
    return results


def worker(rank: int, world: int, engine_name: str, layout: dict, steps: int, mode: str, port: int,
           out_path: str, model_options: dict | None = None, precision: str = "fp32",
           settings: dict | None = None, export: bool = False) -> None:
    """Trains `steps` steps; rank 0 writes losses, grad norms and held bytes to out_path and,
    with `export`, the exported weights (rank 0's names) to out_path + ".weights.pt"."""
    from pipeline.distributed import exit_process

    cfg = train_config(mode, layout, engine_name, model_options=model_options, precision=precision,
                       settings=settings)
    engine = _engine_in_process(rank, world, port, engine_name, cfg)
    evaluated = {}
    results = _steps(engine, 0, steps, evaluated)
    weights = engine.export_state_dict() if export else None  # every rank takes part
    if rank == 0:
        if export:
            torch.save(weights, f"{out_path}.weights.pt")
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump({"losses": [r.losses["loss"] for r in results], "grad_norms": [r.grad_norm for r in results],
                       "held": engine.held_state_bytes(), "eval": evaluated}, f)
    exit_process(0)


def checkpoint_worker(rank: int, world: int, engine_name: str, layout: dict, steps: tuple[int, int], mode: str,
                      port: int, folder: str, out_path: str, precision: str = "fp32",
                      model_options: dict | None = None, settings: dict | None = None) -> None:
    """Trains steps[0]..steps[1]-1 (loading `folder` first when steps[0] > 0), saves into `folder`
    when it started from scratch: two calls with two layouts = a run resumed on another layout."""
    from pipeline.distributed import exit_process

    cfg = train_config(mode, layout, engine_name, precision=precision, model_options=model_options,
                       settings=settings)
    engine = _engine_in_process(rank, world, port, engine_name, cfg)
    first, last = steps
    if first:
        engine.load(folder)
    results = _steps(engine, first, last)
    if not first:
        engine.save(folder)
    if rank == 0:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump({"losses": [r.losses["loss"] for r in results]}, f)
    exit_process(0)

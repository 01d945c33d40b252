"""Distributed parity workers (spawned with gloo on CPU) and their one-process reference.

A layout trains a tiny model for a few AdamW steps of MICRO micro-batches each; every
data-parallel rank gets its own batches, every tensor-parallel rank and pipeline stage of it the
same ones and the same noise seeds. The workers run the trainer's own step functions
(engines/native/steps.py). The reference runs in one process on the same weights: per step, the
mean over the data-parallel ranks' and micro-batches' losses (what the averaged gradients optimise).
"""

from __future__ import annotations

import json
import os

import torch

from model.batch import Document, Packer
from model.config import ModelConfig
from model.multimodal import MultimodalModel


MICRO = 2  # micro-batches per optimizer step (the pipeline schedule needs >= pp of them)
ROWS, SEQ_LEN = 2, 64


def seed_of(step: int, micro: int, dp_rank: int) -> int:
    """The same noise every step, like the same batches: only the weights change, so the loss falls."""
    return 100 * micro + dp_rank


def tiny_cfg(mode: str = "transfusion") -> ModelConfig:
    return ModelConfig(mode=mode, width=64, depth=2, heads=4, kv_heads=2, latent_channels=4, latent_size=4,
                       head_width=32, head_depth=1, codebook_size=16 if mode == "discrete" else 0, attention="sdpa")


def build(cfg: ModelConfig) -> MultimodalModel:
    torch.manual_seed(0)
    model = MultimodalModel(cfg)
    model.init_weights()
    return model


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
            docs.append(Document(task, caption, **(image if task != "text" else {})))
        out.append(packer.collate([docs[:2], docs[2:]], SEQ_LEN, generator=g))
    return [out] * steps


def reference_losses(layout: dict, world: int, steps: int, mode: str) -> list[float]:
    from pipeline.engines.native.parallel import ParallelConfig
    from pipeline.engines.native.steps import LocalStep

    dp = ParallelConfig(**layout).resolved(world).dp
    cfg = tiny_cfg(mode)
    model = build(cfg)
    run_step = LocalStep(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    data = [batches(cfg, r, steps) for r in range(dp)]
    losses = []
    for step in range(steps):
        total = 0.0
        for r in range(dp):  # dp ranks' gradients add up; each rank's loss is divided by dp
            total += run_step(data[r][step], [seed_of(step, m, r) for m in range(MICRO)])["loss"] / dp
        for p in model.parameters():
            p.grad /= dp
        opt.step()
        opt.zero_grad()
        losses.append(total)
    return losses


def worker(rank: int, world: int, layout: dict, steps: int, mode: str, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from pipeline.distributed import exit_process, init_distributed
    from pipeline.engines.native.parallel import ParallelConfig
    from pipeline.engines.native.parallelize import parallelize, sync_partial_grads
    from pipeline.engines.native.pipelining import build_stage
    from pipeline.engines.native.steps import make_step

    init_distributed("cpu")
    pcfg = ParallelConfig(**layout).resolved(world)
    cfg = tiny_cfg(mode)
    pcfg.check_model(cfg, MICRO)
    mesh = pcfg.build_mesh("cpu")
    model = build(cfg)
    root = build_stage(model, mesh, pcfg) if pcfg.pp > 1 else model
    parallelize(model, mesh, pcfg, root=root)
    run_step = make_step(root, mesh, pcfg, None, torch.device("cpu"), MICRO, ROWS, SEQ_LEN)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    dp_rank = mesh["dp"].get_local_rank()
    data = batches(cfg, dp_rank, steps)
    losses = []
    for step in range(steps):
        loss = run_step(data[step], [seed_of(step, m, dp_rank) for m in range(MICRO)])["loss"]
        sync_partial_grads(model, mesh, pcfg)
        opt.step()
        opt.zero_grad()
        mean = torch.tensor(loss)
        dist.all_reduce(mean, group=mesh["dp"].get_group())
        losses.append(float(mean) / pcfg.dp)
    if rank == 0:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(losses, f)
    exit_process(0)

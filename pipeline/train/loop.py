"""The training loop (native engine): one process or many under torchrun/srun.

    nodd train --config configs/train/shapes.toml [--nproc 2] [--resume] [key=value ...]

Per step: `optim.grad_accum` packed micro-batches of this data-parallel rank -> forward and
backward (a plain loop, or the pipeline schedule when parallel.pp > 1: engines/native/steps.py)
-> sum tensor-parallel partial grads -> clip over every mesh and stage -> AdamW -> metrics
(train/metrics.py: metrics.jsonl, TensorBoard, progress bar). Noise and time draws are seeded
by (seed, step, micro-batch, dp rank), so a resumed run repeats an uninterrupted one exactly.
SIGTERM / SIGUSR1 (cluster pre-emption) finish the step, save a checkpoint and exit 0.
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from core.config import save_resolved
from core.errors import ConfigError
from model.multimodal import MultimodalModel
from pipeline.data.loader import PackedLoader
from pipeline.distributed import DistInfo, init_distributed
from pipeline.engines.native.parallelize import parallelize, sync_partial_grads
from pipeline.engines.native.pipelining import build_stage
from pipeline.engines.native.steps import make_step
from pipeline.train.checkpoint import Checkpointer
from pipeline.train.config import TrainConfig
from pipeline.train.metrics import (
    MetricsSink,
    flops_per_token,
    matmul_params,
    mean_context,
    measure_peak_flops,
    peak_memory_gib,
)
from pipeline.train.optim import build_optimizer, clip_grad_norm, lr_factor

log = logging.getLogger(__name__)


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop saves and exits at the next step boundary."""

    def __init__(self, device: torch.device):
        self.signal, self.device = None, device
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._set)

    def _set(self, signum, _frame):
        self.signal = signum

    def agreed(self) -> bool:
        """Whether any rank was signalled. Ranks get the signal at slightly different moments;
        deciding alone, one would enter the checkpoint's collectives while another starts the
        next step's, and both would hang. So the ranks agree after every step (one tiny all-reduce)."""
        if not dist.is_initialized():
            return self.signal is not None
        flag = torch.tensor([0 if self.signal is None else int(self.signal)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and self.signal is None:
            self.signal = int(flag.item())
        return bool(flag.item())


def noise_seed(seed: int, step: int, micro: int, dp_rank: int) -> int:
    return ((seed * 1_000_003 + step) * 64 + micro) * 4096 + dp_rank


def build_model(cfg: TrainConfig, info: DistInfo):
    """This rank's part of the parallel model, the module a step runs (the model, or its pipeline
    stage), and the full model's matmul parameter count.
    Every rank builds and initialises the full model with the same seed, then keeps its pipeline
    stage and shards it: identical weights to a one-process run, by construction."""
    pcfg = cfg.parallel.resolved(info.world)
    pcfg.check_model(cfg.model, cfg.optim.grad_accum)
    torch.manual_seed(cfg.train.seed)
    model = MultimodalModel(cfg.model).to(info.device)
    model.init_weights()
    params = matmul_params(model)
    model.backbone.checkpoint_blocks = cfg.train.activation_checkpointing
    mesh, root = None, model
    if info.world > 1:
        mesh = pcfg.build_mesh(info.device.type)
        if pcfg.pp > 1:
            root = build_stage(model, mesh, pcfg)
        parallelize(model, mesh, pcfg, root=root)
    if cfg.train.compile:
        for block in model.backbone.layers.values():
            block.compile()
    return model, root, mesh, pcfg, params


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    info = init_distributed(cfg.train.device)
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / "train_config.toml")
    model, root, mesh, pcfg, params = build_model(cfg, info)
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    loader = PackedLoader(cfg.data, cfg.model, rank=dp_rank, world=pcfg.dp)
    optimizer = build_optimizer(model, cfg.optim, distributed=mesh is not None)
    ckpt = Checkpointer(run_dir, cfg.train.keep_checkpoints, info.rank)
    step = 0
    if not resume and ckpt.finished():
        raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume to continue it, or use a new run_dir")
    if resume:
        loaded = ckpt.load_latest(model, optimizer)
        if loaded is not None:
            meta, extra = loaded
            step = meta["step"]
            if extra is not None:
                loader.load_state_dict(extra["loader"])
            else:  # a rank the saved run did not have: skip the epochs that run had read
                loader.reader.start_at_epoch(meta.get("epoch", -1) + 1)
            log.info("resumed from step %d (%s)", step, "same layout" if extra else "new layout: data restarts at the next epoch")
    stop = _StopFlag(info.device)
    autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if cfg.train.precision == "bf16"
                else nullcontext())
    run_step = make_step(root, mesh, pcfg, autocast, info.device, cfg.optim.grad_accum,
                         cfg.data.batch_rows, cfg.data.seq_len)
    stage_group = mesh["pp"].get_group() if pcfg.pp > 1 else None
    sink = MetricsSink(run_dir, cfg.train.steps, enabled=info.is_main, start_step=step)
    peak = cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops > 0 else (
        measure_peak_flops(info.device, torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32)
        if info.is_main else 1.0)
    last = {}
    started, tokens_since, flops_since = time.perf_counter(), 0, 0.0
    while step < cfg.train.steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(step, cfg.optim, cfg.train.steps)
        batches = [loader.next_batch().to(info.device) for _ in range(cfg.optim.grad_accum)]
        seeds = [noise_seed(cfg.train.seed, step, micro, dp_rank) for micro in range(len(batches))]
        totals = run_step(batches, seeds)
        for b in batches:
            tokens_since += b.num_tokens
            flops_since += b.num_tokens * flops_per_token(params, cfg.model.depth, cfg.model.width, mean_context(b))
        if mesh is not None:
            sync_partial_grads(model, mesh, pcfg)
        grad_norm = clip_grad_norm(list(model.parameters()), cfg.optim.grad_clip, stage_group, info.device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last = totals
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            elapsed = time.perf_counter() - started
            sink.write(step, {**{k: round(v, 5) for k, v in totals.items()}, "grad_norm": round(grad_norm, 4),
                              "lr": optimizer.param_groups[0]["lr"],
                              "tokens_per_s": round(tokens_since * pcfg.dp / elapsed, 1),
                              "mfu": round(flops_since * pcfg.dp / elapsed / (peak * info.world), 4),
                              "memory_gib": round(peak_memory_gib(info.device), 3),
                              "packing": round(loader.efficiency, 4), "time": time.time()})
            started, tokens_since, flops_since = time.perf_counter(), 0, 0.0
        stopping = stop.agreed()
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stopping:
            ckpt.save(step, model, optimizer, {"loader": loader.state_dict()},
                      {"world": info.world, "parallel": pcfg.__dict__, "epoch": loader.reader.epoch})
        if stopping:
            log.warning("signal %d: saved step %d, exiting", stop.signal, step)
            break
    sink.close()
    return {"step": step, **last}

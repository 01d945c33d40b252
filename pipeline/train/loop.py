"""The training loop (native engine): one process or many under torchrun/srun.

    nodd train --config configs/train/shapes.toml [--nproc 2] [--resume] [key=value ...]

Per step: next packed batch of this data-parallel rank -> forward (loss breakdown) -> backward
(`optim.grad_accum` micro-batches) -> sum tensor-parallel partial grads -> clip -> AdamW ->
metrics. Noise and time draws are seeded by (seed, step, micro-batch, dp rank), so a resumed run
repeats an uninterrupted one exactly. SIGTERM / SIGUSR1 (cluster pre-emption) finish the step,
save a checkpoint and exit 0.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from model.multimodal import MultimodalModel
from pipeline.config import save_resolved
from pipeline.data.loader import PackedLoader
from pipeline.distributed import DistInfo, init_distributed
from pipeline.engines.native.parallelize import parallelize, sync_partial_grads
from pipeline.errors import ConfigError
from pipeline.train.checkpoint import Checkpointer
from pipeline.train.config import TrainConfig
from pipeline.train.optim import build_optimizer, clip_grad_norm, lr_factor

log = logging.getLogger(__name__)


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop saves and exits at the next step boundary."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._set)

    def _set(self, signum, _frame):
        self.signal = signum


def build_model(cfg: TrainConfig, info: DistInfo):
    """The parallel model. Every rank builds and initialises the full model with the same seed,
    then parallelize() shards it: identical weights to a one-process run, by construction."""
    pcfg = cfg.parallel.resolved(info.world)
    pcfg.check_model(cfg.model)
    if pcfg.pp > 1:
        raise ConfigError("parallel.pp > 1: pipeline parallelism is not implemented in the native engine yet; "
                          "use dp_shard/dp_replicate/tp")
    torch.manual_seed(cfg.train.seed)
    model = MultimodalModel(cfg.model).to(info.device)
    model.init_weights()
    mesh = None
    if info.world > 1:
        mesh = pcfg.build_mesh(info.device.type)
        parallelize(model, mesh, pcfg)
    if cfg.train.compile:
        for block in model.backbone.layers.values():
            block.compile()
    return model, mesh, pcfg


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    info = init_distributed(cfg.train.device)
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / "train_config.toml")
    model, mesh, pcfg = build_model(cfg, info)
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
    stop = _StopFlag()
    metrics = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if info.is_main else None
    autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if cfg.train.precision == "bf16"
                else nullcontext())
    last = {}
    started, tokens_since = time.perf_counter(), 0
    while step < cfg.train.steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.optim.lr * lr_factor(step, cfg.optim, cfg.train.steps)
        totals: dict[str, float] = {}
        for micro in range(cfg.optim.grad_accum):
            batch = loader.next_batch().to(info.device)
            torch.manual_seed(((cfg.train.seed * 1_000_003 + step) * 64 + micro) * 4096 + dp_rank)
            with autocast:
                out = model(batch)
            (out.loss / cfg.optim.grad_accum).backward()
            for k, v in {"loss": out.loss.detach(), **out.losses}.items():
                totals[k] = totals.get(k, 0.0) + float(v) / cfg.optim.grad_accum
            tokens_since += batch.num_tokens
        if mesh is not None:
            sync_partial_grads(model, mesh, pcfg)
        grad_norm = clip_grad_norm(list(model.parameters()), cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        last = totals
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            elapsed = time.perf_counter() - started
            record = {"step": step, **{k: round(v, 5) for k, v in totals.items()}, "grad_norm": round(grad_norm, 4),
                      "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": round(tokens_since * pcfg.dp / elapsed, 1),
                      "packing": round(loader.efficiency, 4), "time": time.time()}
            started, tokens_since = time.perf_counter(), 0
            if metrics is not None:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
                log.info("step %d loss %.4f (text %.3f, und %.3f, image %.3f) %.0f tok/s", step, totals["loss"],
                         totals["text"], totals["understanding"], totals["image"], record["tokens_per_s"])
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stop.signal is not None:
            ckpt.save(step, model, optimizer, {"loader": loader.state_dict()},
                      {"world": info.world, "parallel": pcfg.__dict__, "epoch": loader.reader.epoch})
        if stop.signal is not None:
            log.warning("signal %d: saved step %d, exiting", stop.signal, step)
            break
    if metrics is not None:
        metrics.close()
    return {"step": step, **last}

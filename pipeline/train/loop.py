"""The trainer: one process or many under torchrun/srun, any engine (train.engine).

    nodd train --config configs/train/shapes.toml [--nproc 2] [--resume] [key=value ...]

Per step: the learning rate of the schedule, `optim.grad_accum` packed micro-batches of this
data-parallel rank and their noise seeds -> `engine.train_step` (forward, backward, gradient
sync, clipping, optimizer: pipeline/engines/) -> metrics (train/metrics.py: metrics.jsonl,
TensorBoard, progress bar) -> validation losses every `train.eval_every` steps (train/validation.py:
validation.jsonl) -> a checkpoint now and then (train/checkpoint.py). Noise and time
draws are seeded by (seed, step, micro-batch, dp rank), so a resumed run repeats an
uninterrupted one exactly. SIGTERM / SIGUSR1 (cluster pre-emption) finish the step, save a
checkpoint and exit 0.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from core.config import save_resolved, to_dict
from core.errors import ConfigError
from pipeline.data.loader import PackedLoader
from pipeline.data.prefetch import Prefetcher, prefetch_depth
from pipeline.distributed import init_distributed
from pipeline.engines.base import check_layout, get_engine
from pipeline.export import run_meta
from pipeline.train.checkpoint import Checkpointer, read_meta
from pipeline.train.config import TrainConfig
from pipeline.train.cpu_runtime import tune_cpu_runtime
from pipeline.train.metrics import (
    FlopCounter,
    MetricsSink,
    measure_peak_flops,
    peak_memory_gib,
)
from pipeline.train.trackers import check_packages
from pipeline.train.validation import Validation

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


def memory_record(device: torch.device, engine) -> dict:
    """Peak memory of every rank (they differ: pipeline stages, FSDP shards) and their maximum,
    and the parameter and optimizer-state MiB each rank holds (what ZeRO / FSDP divide)."""
    held = engine.held_state_bytes()
    mine = torch.tensor([peak_memory_gib(device), held["parameters"] / 2 ** 20, held["optimizer"] / 2 ** 20],
                        dtype=torch.float64, device=device)
    ranks = [mine]
    if dist.is_initialized():
        ranks = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(ranks, mine)
    per_rank = [round(float(r[0]), 3) for r in ranks]
    return {"memory_gib": max(per_rank), "memory_gib_per_rank": per_rank,
            "state_mib_per_rank": [{"parameters": round(float(r[1]), 2), "optimizer": round(float(r[2]), 2)}
                                   for r in ranks]}


def _check_same_freeze(checkpoint: Path, freeze: list[str]) -> None:
    """The optimizer state holds the trainable parameters only: a resume must train the same ones."""
    saved = read_meta(checkpoint).get("freeze", [])
    if saved != freeze:
        raise ConfigError(f"{checkpoint} trained with train.freeze={saved}, this run asks for {freeze}; resume with "
                          f"the same list, or start the next stage as a new run from its weights "
                          f"(train.init_from={checkpoint / 'export'})")


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    info = init_distributed(cfg.train.device)
    if info.device.type == "cpu":
        tune_cpu_runtime()
    layout = check_layout(cfg, info.world)  # a bad layout fails here, before anything is written
    check_packages(cfg.train.trackers)  # on every rank: rank 0 failing alone would leave the others waiting
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, run_dir / "train_config.toml")
    engine = get_engine(cfg.train.engine)(cfg, info)
    loader = PackedLoader(cfg.data, cfg.model, rank=engine.dp_rank, world=engine.dp_size)
    validation = Validation(cfg, engine) if cfg.train.eval_every > 0 else None  # fails early without held-out rows
    ckpt = Checkpointer(run_dir, cfg.train.keep_checkpoints, info.rank, info.world)
    export_meta = run_meta(cfg) if info.is_main and cfg.train.export_weights else None
    step = 0
    if not resume and ckpt.finished():
        raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume to continue it, or use a new run_dir")
    if resume and ckpt.finished():
        _check_same_freeze(ckpt.finished()[-1], cfg.train.freeze)
    if resume:
        loaded = ckpt.load_latest(engine)
        if loaded is not None:
            meta, extra = loaded
            step = meta["step"]
            if extra is not None:
                loader.load_state_dict(extra["loader"])
            else:  # a rank the saved run did not have: skip the epochs that run had read
                loader.reader.start_at_epoch(meta.get("epoch", -1) + 1)
            log.info("resumed from step %d (%s)", step, "same layout" if extra else "new layout: data restarts at the next epoch")
    stop = _StopFlag(info.device)
    sink = MetricsSink(run_dir, cfg.train.steps, enabled=info.is_main, start_step=step, settings=cfg.train,
                       config=to_dict(cfg))
    peak = cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops > 0 else (
        measure_peak_flops(info.device, torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32)
        if info.is_main else 1.0)
    # from here on only the prefetcher reads the loader (in a thread of its own on GPUs)
    data = Prefetcher(loader, cfg.optim.grad_accum, prefetch_depth(cfg.data.prefetch, info.device))
    try:
        last = _steps(cfg, info, engine, data, ckpt, sink, stop, step, peak,
                      {"world": info.world, "parallel": layout.__dict__, "freeze": cfg.train.freeze}, export_meta,
                      validation)
    finally:
        data.close()
        sink.close()
    return last


def _steps(cfg, info, engine, data: Prefetcher, ckpt: Checkpointer, sink: MetricsSink, stop: _StopFlag,
           step: int, peak: float, meta: dict, export_meta, validation: Validation | None) -> dict:
    """The training loop from `step` to train.steps (or a stop signal); returns the last losses."""
    last = {}
    count_flops = FlopCounter(cfg.model)
    started, tokens_since, flops_since = time.perf_counter(), 0, 0.0
    while step < cfg.train.steps:
        lr = cfg.optim.lr_at(step, cfg.train.steps)
        batches = [b.to(info.device) for b in data.next_step()]
        seeds = [noise_seed(cfg.train.seed, step, micro, engine.dp_rank) for micro in range(len(batches))]
        result = engine.train_step(batches, seeds, lr)
        for b in batches:
            tokens_since += b.num_tokens
            flops_since += count_flops(b)
        step += 1
        last = result.losses
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            elapsed = time.perf_counter() - started
            sink.write(step, {**{k: round(v, 5) for k, v in result.losses.items()},
                              "grad_norm": round(result.grad_norm, 4), "lr": lr,
                              "tokens_per_s": round(tokens_since * engine.dp_size / elapsed, 1),
                              "mfu": round(flops_since * engine.dp_size / elapsed / (peak * info.world), 4),
                              "flops": flops_since * engine.dp_size,  # training FLOPs of the interval
                              **memory_record(info.device, engine),
                              "packing": round(data.efficiency, 4), "time": time.time()})
            started, tokens_since, flops_since = time.perf_counter(), 0, 0.0
        if validation is not None and (step % cfg.train.eval_every == 0 or step == cfg.train.steps):
            began = time.perf_counter()
            sink.write_validation(step, validation.run(engine), time.perf_counter() - began)
            started += time.perf_counter() - began  # tokens/s counts training time only
        stopping = stop.agreed()
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps or stopping:
            ckpt.save(step, engine, {"loader": data.state_dict()},
                      {**meta, "epoch": data.epoch}, export_meta, export=cfg.train.export_weights)
        if stopping:
            log.warning("signal %d: saved step %d, exiting", stop.signal, step)
            break
    return {"step": step, **last}

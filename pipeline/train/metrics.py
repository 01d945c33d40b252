"""Training metrics: what a step cost (FLOPs, MFU, memory) and where the numbers go.

    sink = MetricsSink(run_dir, total_steps, enabled=is_main)
    sink.write(step, {"loss": ..., "tokens_per_s": ...})    # metrics.jsonl, TensorBoard, progress bar
    sink.close()

MFU = achieved model FLOP/s / peak FLOP/s. Model FLOPs follow PaLM's accounting, part by part
(`FlopCounter`): 6 x the matmul parameters of each part (every nn.Linear; embedding lookups are
not matmuls) x the tokens it runs on (the backbone: every token; the LM head: the positions with a
target; the latent adapters: the image tokens; MAR's head: its tokens x diffusion_batch_mul draws),
plus 12 x depth x width x each token's document length. The peak is `train.peak_tflops` when
set (use the vendor figure on GPUs: H100/H200 dense bf16 = 989), else measured at start with a
large matmul in the training precision, so on CPU the figure is relative to what the cores really do.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

from model.batch import IGNORE, IMAGE_LOSS, PackedBatch

log = logging.getLogger(__name__)


def matmul_params(model: nn.Module) -> int:
    """Parameters that take part in a matmul per token (a DTensor reports its global size)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def mean_context(batch: PackedBatch) -> float:
    """The length of each real token's document, averaged over the tokens: the context T of
    PaLM's 12 x L x W x T term (which counts the whole window, causal or not)."""
    seg = batch.segment_ids
    rows = torch.arange(seg.shape[0], device=seg.device).unsqueeze(1) * (int(seg.max()) + 1)
    ids = (seg + rows)[seg > 0]  # documents numbered per row: make them unique over the batch
    if ids.numel() == 0:
        return 0.0
    lengths = torch.bincount(ids).double()
    return float((lengths * lengths).sum() / lengths.sum())


def flops_per_token(params: int, depth: int, width: int, context: float) -> float:
    return 6.0 * params + 12.0 * depth * width * context


class FlopCounter:
    """Training FLOPs (forward + backward) of one packed batch for a model config, counted per
    part on the tokens that part runs on, so that arms of an ablation with different heads,
    vocabularies and image lengths compare at equal compute (pipeline/ablate.py). The sizes come
    from a meta-device build: the global model, whatever engine or layout trains it."""

    def __init__(self, cfg):
        from model.multimodal import MultimodalModel

        with torch.device("meta"):
            model = MultimodalModel(cfg)
        count = lambda *parts: sum(matmul_params(p) for p in parts if p is not None)  # noqa: E731
        self.cfg = cfg
        self.backbone = count(model.backbone)
        self.lm_head = model.lm_head.weight.numel()
        self.latent = count(model.latent_in, model.latent_out, model.time_embed, model.position_query,
                            model.patch_position)
        self.head = count(model.mar_head)

    def head_tokens(self, batch: PackedBatch) -> int:
        """Tokens MAR's head runs on per draw: the generated latents (own-position) or the
        positions before them."""
        if self.cfg.mode != "mar":
            return 0
        if self.cfg.own_position_images:
            return int(batch.latent_loss.sum())
        return int((batch.target_kind == IMAGE_LOSS).sum())

    def __call__(self, batch: PackedBatch) -> float:
        tokens = batch.num_tokens
        images = int((batch.latent_mask & (batch.segment_ids > 0)).sum())
        targets = int((batch.targets != IGNORE).sum())
        draws = self.head_tokens(batch) * self.cfg.diffusion_batch_mul
        attention = 12.0 * self.cfg.depth * self.cfg.width * mean_context(batch) * tokens
        return 6.0 * (self.backbone * tokens + self.lm_head * targets + self.latent * images + self.head * draws) \
            + attention


def measure_peak_flops(device: torch.device, dtype: torch.dtype, max_size: int = 2048, seconds: float = 0.3) -> float:
    """FLOP/s of a square matmul on this device and dtype (the MFU ceiling when none is given).
    The size doubles from 256 up to max_size while one matmul takes under seconds / 8: a CPU
    without bf16 instructions (avx2 only) multiplies bf16 at about 1 GFLOP/s, and four 2048
    matmuls there took minutes before the first training step."""
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up
        once = _timed(lambda: a @ b, device)
        if size >= max_size or once > seconds / 8:
            break
        size *= 2
    runs, start = 0, time.perf_counter()
    while True:
        a @ b
        runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and runs >= 3:
            return 2 * size ** 3 * runs / elapsed


def _timed(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 training is worth it here: always on GPUs; on a CPU only where bf16 matmuls
    run clearly faster than fp32 (avx512_bf16 / AMX: 4-5x on these machines; without them bf16 is
    emulated and slower than fp32)."""
    if device.type != "cpu":
        return True
    return measure_peak_flops(device, torch.bfloat16) > 1.25 * measure_peak_flops(device, torch.float32)


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


class MetricsSink:
    """Rank 0 writes `metrics.jsonl` (one JSON object per logged step; appended on resume),
    TensorBoard scalars under `tensorboard/`, and a progress line on stderr for people. Other
    ranks get a sink that drops everything."""

    def __init__(self, run_dir: Path, total_steps: int, enabled: bool, start_step: int = 0,
                 settings=None, config: dict | None = None):
        """`settings`: the train section (its `trackers`: TensorBoard, MLflow, W&B; default
        jsonl and TensorBoard); `config`: the resolved run config the trackers record."""
        self.enabled, self.total = enabled, total_steps
        self.jsonl = self.validation = self.tensorboard = self.bar = self.trackers = None
        if not enabled:
            return
        self.run_dir = run_dir
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        wanted = settings.trackers if settings is not None else ["jsonl", "tensorboard"]
        if "tensorboard" in wanted:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
            except ImportError:  # the base install has it; a trimmed environment still trains
                log.warning("tensorboard is not installed: metrics go to metrics.jsonl only")
        if settings is not None and set(wanted) - {"jsonl", "tensorboard"}:
            from pipeline.train.trackers import Trackers

            self.trackers = Trackers(run_dir, settings, config or {})
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **record}) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "time":
                    self.tensorboard.add_scalar(f"train/{key}", value, step)
        if self.trackers is not None:
            self.trackers.metrics(step, record)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                 mfu=f"{record['mfu']:.1%}", refresh=False)
        else:
            log.info("step %d/%d loss %.4f (text %.3f, und %.3f, image %.3f) %.0f tok/s mfu %.1f%% mem %.2f GiB",
                     step, self.total, record["loss"], record["text"], record["understanding"], record["image"],
                     record["tokens_per_s"], 100 * record["mfu"], record["memory_gib"])

    def write_validation(self, step: int, losses: dict[str, float], seconds: float) -> None:
        """Validation losses: `validation.jsonl` (metrics.jsonl keeps one record shape), TensorBoard
        and the trackers under val/."""
        if not self.enabled:
            return
        record = {k: round(v, 5) for k, v in losses.items()}
        if self.validation is None:  # opened at the first record: runs without validation get no file
            self.validation = open(self.run_dir / "validation.jsonl", "a", encoding="utf-8")
        self.validation.write(json.dumps({"step": step, **record, "seconds": round(seconds, 3)}) + "\n")
        self.validation.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                self.tensorboard.add_scalar(f"val/{key}", value, step)
        if self.trackers is not None:
            self.trackers.metrics(step, record, prefix="val/")
        log.info("step %d/%d validation loss %.4f (text %.3f, und %.3f, image %.3f) in %.1f s", step, self.total,
                 record["loss"], record["text"], record["understanding"], record["image"], seconds)

    def close(self) -> None:
        for sink in (self.jsonl, self.validation, self.tensorboard, self.bar, self.trackers):
            if sink is not None:
                sink.close()

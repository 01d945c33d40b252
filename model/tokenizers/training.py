"""Train and evaluate an ImageTokenizer: `fit` (AdamW, warmup + cosine, grad clipping, VQ
dead-code restarts) and `evaluate` (PSNR, and codebook utilisation / perplexity for codes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

import torch

from core.errors import ConfigError, DataError
from core.schedule import warmup_cosine

from .autoencoder import ImageTokenizer
from .vq import codebook_utilisation, perplexity


def _batch_stream(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Yield batches forever: re-iterate a re-iterable (list, DataLoader); a one-shot iterator
    that runs out is an error, because silently training on fewer steps hides bugs."""
    reiterable = iter(batches) is not batches
    while True:
        got_any = False
        for batch in batches:
            got_any = True
            yield batch
        if not reiterable or not got_any:
            raise DataError(
                "the batch iterator ran out before `steps` were done; pass an endless generator, "
                "a re-iterable (list/DataLoader), or fewer steps"
            )


def _reset_adam_rows(opt: torch.optim.Optimizer, param: torch.nn.Parameter, rows: torch.Tensor) -> None:
    # Revived codes must not inherit the moments of the dead code's old gradients.
    state = opt.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key][rows] = 0.0


def fit(
    tokenizer: ImageTokenizer,
    batches: Iterable[torch.Tensor],
    steps: int,
    lr: float = 2e-3,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    weight_decay: float = 0.0,
    warmup: int | None = None,
) -> list[dict[str, float]]:
    """Train `tokenizer` for `steps` steps on image batches (B, 3, H, W) in [-1, 1].

    AdamW (weight decay 0 by default: decaying a codebook or the conv filters of such a
    small net only slows it down), linear warmup (default min(100, steps // 20) steps)
    then cosine to 10% of lr, gradient clipping at norm 1.0. For vq, dead codes are
    restarted every `config.vq_restart_every` steps. Returns one dict per step with
    "step", "lr", "grad_norm", "seconds", the loss breakdown, and "restarted" (vq).
    """
    if steps <= 0:
        raise ConfigError(f"fit: steps = {steps} must be a positive int")
    if lr <= 0:
        raise ConfigError(f"fit: lr = {lr} must be > 0")
    warmup = max(1, min(100, steps // 20)) if warmup is None else max(1, warmup)
    device = next(tokenizer.parameters()).device
    params = [p for p in tokenizer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
    restart_every = tokenizer.config.vq_restart_every if tokenizer.kind == "vq" else 0
    tokenizer.train()
    history: list[dict[str, float]] = []
    stream = _batch_stream(batches)
    t0 = time.perf_counter()
    for step in range(steps):
        x = next(stream)
        if not isinstance(x, torch.Tensor):
            raise DataError(f"fit expects each batch to be a Tensor (B, 3, H, W), got {type(x).__name__}")
        x = x.to(device, non_blocking=True)
        cur_lr = warmup_cosine(step, warmup, end=steps - 1, floor=0.1, peak=lr)  # 10% of lr at the last step
        for group in opt.param_groups:
            group["lr"] = cur_lr
        _, losses = tokenizer(x)
        total = losses["total"]
        if not torch.isfinite(total):
            raise DataError(
                f"tokenizer loss became {total.item()} at step {step}; check inputs are in [-1, 1] or lower lr (now {lr})"
            )
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        record: dict[str, float] = {"step": float(step), "lr": cur_lr, "grad_norm": float(grad_norm)}
        record.update({k: float(v.detach()) for k, v in losses.items()})
        if restart_every and (step + 1) % restart_every == 0 and step + 1 < steps:
            revived = tokenizer.restart_dead_codes()
            if revived.numel():
                assert tokenizer.quantizer is not None
                _reset_adam_rows(opt, tokenizer.quantizer.codebook.weight, revived)
            record["restarted"] = float(revived.numel())
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        if on_step is not None:
            on_step(step, record)
    tokenizer.eval()
    return history


@torch.no_grad()
def evaluate(tokenizer: ImageTokenizer, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Reconstruction quality on images (N, 3, H, W) in [-1, 1].

    Reconstructs from the posterior mean (kl) or the quantised codes (vq/fsq), clamps to
    [-1, 1], and reports "mse" and "psnr" in dB on the [0, 1] pixel scale (from the MSE over
    all images, so one perfect image cannot make it infinite). vq/fsq add
    "codebook_utilisation" (fraction of the vocabulary used on these images) and "perplexity".
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"evaluate expects a non-empty image tensor (N, 3, H, W), got {tuple(images.shape)}")
    was_training = tokenizer.training
    tokenizer.eval()
    device = next(tokenizer.parameters()).device
    sq_err, count = 0.0, 0
    all_codes: list[torch.Tensor] = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device)
        out = tokenizer.encode(x)
        recon = tokenizer.decode(out.latent).clamp(-1.0, 1.0)
        # [-1, 1] -> [0, 1] halves the error, so squared error scales by 1/4.
        sq_err += float(((recon - x) / 2).pow(2).sum())
        count += x.numel()
        if out.codes is not None:
            all_codes.append(out.codes.flatten().cpu())
    tokenizer.train(was_training)
    mse = sq_err / count
    result = {"mse": mse, "psnr": 10.0 * math.log10(1.0 / max(mse, 1e-10))}
    if all_codes:
        codes = torch.cat(all_codes)
        vocab = int(tokenizer.vocab_size or 0)
        result["codebook_utilisation"] = codebook_utilisation(codes, vocab)
        result["perplexity"] = perplexity(codes, vocab)
    return result

"""Image and video generation for the three modes, seeded, with classifier-free guidance.

    images = generate_images(model, [caption_ids, ...], bos_id, grid=(1, 8, 8), steps=20, cfg_scale=3.0)

  transfusion  the whole image at once: an ODE (Euler or Heun, `steps`) from noise, each step one
               forward over the image tokens against the cached prompt
  mar          token by token (raster or a seeded random order): the hidden state before each
               token conditions MARHead, whose ODE (`steps`) turns noise * temperature into it;
               mar_order="masked": the whole image starts as mask embeddings and is filled in over
               `fill_steps` passes in a seeded random order (MAR's cosine schedule: few tokens
               first, more later), each pass revealing tokens from their own outputs
  discrete     code by code from the LM head restricted to the codebook: temperature, top-k, top-p
  next-scale   (model.var_scales, mar or discrete) one pass per scale: each scale block is
               appended to the cache whole, its input known from the coarser scales, and all its
               tokens come at once from their own outputs (the flow head, or the LM head's codes)

Guidance (`cfg_scale` not None) runs a second set of rows whose prompt is the empty caption
([bos] [boi]) and mixes velocities (continuous modes) or logits (discrete) as
uncond + scale * (cond - uncond); scale 1 gives the conditional prediction, None skips the rows.
Returns latents (B, C, H, W) / (B, T, C, H, W) or codes (B, H, W) / (B, T, H, W).
"""

from __future__ import annotations

import math

import torch

from model import batch as pb
from model import scales
from model.flow import guided, integrate
from model.multimodal import MultimodalModel
from model.sampling.decoder import Decoder
from model.sampling.text import pick


@torch.no_grad()
def generate_images(model: MultimodalModel, captions: list[list[int]], bos_id: int,
                    grid: tuple[int, int, int] | None = None, steps: int = 20, method: str = "euler",
                    cfg_scale: float | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    seed: int = 0, use_cache: bool = True, fill_steps: int = 8) -> torch.Tensor:
    """`grid` = (frames, H/p, W/p) in tokens; default one frame of the configured latent size;
    `fill_steps`: masked mar's transformer passes per image (at most one per token)."""
    cfg = model.cfg
    side = cfg.latent_size // cfg.patch_size
    grid = tuple(grid or (1, side, side))
    guidance = cfg_scale is not None  # even 1.0 runs the unconditional rows (tests rely on it)
    prompts = [[bos_id, *c, cfg.boi_id] for c in captions]
    if guidance:
        prompts += [[bos_id, cfg.boi_id]] * len(captions)
    n = grid[0] * grid[1] * grid[2]
    if cfg.next_scale_images:
        if grid != (1, side, side):
            raise ValueError(f"next-scale generation makes single images of the configured grid (1, {side}, {side}), "
                             f"not {grid}")
        n = scales.scale_tokens(cfg.var_scales)
    decoder = Decoder(model, prompts, n + 1, use_cache)
    g = torch.Generator().manual_seed(seed)
    run = {"transfusion": _transfusion, "mar": _mar_masked if cfg.mar_order == "masked" else _mar,
           "discrete": _discrete}[cfg.mode]
    if cfg.next_scale_images:
        run = _next_scale
    out = run(decoder, len(captions), grid, g, steps=steps, method=method, cfg_scale=cfg_scale,
              temperature=temperature, top_k=top_k, top_p=top_p, fill_steps=fill_steps)
    if cfg.mode == "discrete":
        codes = (out - cfg.code_offset).reshape(len(captions), *grid)
        return codes.squeeze(1) if grid[0] == 1 else codes
    images = [pb.unpatchify(x, grid, cfg.patch_size, video=grid[0] > 1) for x in out.cpu()]
    return torch.stack(images)


def _image_positions(decoder: Decoder, grid) -> torch.Tensor:
    """(rows, N, 3) positions of an image that starts where each row's text stopped."""
    return decoder.next_position[:, None, None] + pb.grid_positions(0, grid).to(decoder.device)


def _split(x: torch.Tensor, b: int, scale: float | None) -> torch.Tensor:
    """Combine the conditional rows [:b] with the unconditional rows [b:] (if any)."""
    return guided(x[:b], x[b:], scale) if len(x) > b else x


def _modality(grid) -> int:
    return pb.VIDEO if grid[0] > 1 else pb.IMAGE


def _transfusion(decoder: Decoder, b: int, grid, g, *, steps, method, cfg_scale, **_):
    model, rows = decoder.model, decoder.rows
    decoder.prefill()
    positions = _image_positions(decoder, grid)
    n, dim = positions.shape[1], model.cfg.patch_dim
    tokens = torch.zeros(rows, n, dtype=torch.long, device=decoder.device)
    span_grid = torch.tensor([grid] * rows, dtype=torch.long)
    x0 = torch.randn(b, n, dim, generator=g).to(decoder.device)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        both, times = x.repeat(rows // b, 1, 1), t.repeat(rows // b, 1)
        h = decoder.append(tokens, _modality(grid), positions, latents=both, times=times, span=True, grid=grid,
                           commit=False)
        v = model.latent_out(h.reshape(rows * n, -1), span_grid).reshape(rows, n, dim).float()
        return _split(v, b, cfg_scale)

    return integrate(velocity, x0, steps, method)


def _mar(decoder: Decoder, b: int, grid, g, *, steps, method, cfg_scale, temperature, **_):
    model, rows, device = decoder.model, decoder.rows, decoder.device
    coords = pb.grid_positions(0, grid).to(device)  # (N, 3) raster
    n, dim = len(coords), model.cfg.patch_dim
    random = model.cfg.mar_order == "random"
    order = torch.stack([torch.randperm(n, generator=g) if random else torch.arange(n) for _ in range(b)])
    order = order.repeat(rows // b, 1).to(device)  # unconditional rows follow their conditional row's order
    query = (lambda i: coords[order[:, i]]) if random else (lambda i: None)  # noqa: E731
    start = decoder.next_position.clone()
    z = decoder.prefill(query(0))
    out = torch.zeros(b, n, dim, device=device)
    for i in range(n):
        x0 = temperature * torch.randn(b, dim, generator=g).to(device)
        zz = z

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = model.mar_head(x.repeat(rows // b, 1), t.repeat(rows // b), zz).float()
            return _split(v, b, cfg_scale)

        token = integrate(velocity, x0, steps, method)  # (b, D)
        cells = order[:b, i]
        out[torch.arange(b), cells] = token
        if i == n - 1:
            break
        positions = (start[:, None] + coords[order[:, i]]).unsqueeze(1)  # (rows, 1, 3)
        q = query(i + 1)
        h = decoder.append(torch.zeros(rows, 1, dtype=torch.long, device=device), _modality(grid), positions,
                           latents=token.repeat(rows // b, 1)[:, None], span=i == 0, grid=grid,
                           queries=q[:, None] if q is not None else None)
        z = h[:, -1]
    return out


def revealed_after(n: int, steps: int) -> list[int]:
    """Tokens known after each of masked mar's fill passes: MAR's cosine schedule (the masked
    count after pass k is n * cos(pi/2 * k / steps), rounded down), at least one more per pass,
    all n after the last."""
    steps = max(1, min(steps, n))
    known = []
    for k in range(1, steps + 1):
        masked = math.floor(n * math.cos(math.pi / 2 * k / steps))
        known.append(max(n - masked, (known[-1] if known else 0) + 1, k))
    known[-1] = n
    return [min(k, n) for k in known]


def _mar_masked(decoder: Decoder, b: int, grid, g, *, steps, method, cfg_scale, temperature, fill_steps, **_):
    model, rows, device = decoder.model, decoder.rows, decoder.device
    decoder.prefill()
    positions = _image_positions(decoder, grid)
    n, dim = positions.shape[1], model.cfg.patch_dim
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(b)]).to(device)  # (b, n)
    tokens = torch.zeros(rows, n, dtype=torch.long, device=device)
    known = torch.zeros(b, n, dim, device=device)
    masked = torch.ones(b, n, dtype=torch.bool, device=device)
    done = 0
    for upto in revealed_after(n, fill_steps):
        h = decoder.append(tokens, _modality(grid), positions, latents=known.repeat(rows // b, 1, 1),
                           masked=masked.repeat(rows // b, 1), span=True, grid=grid, commit=False)  # (rows, n, W)
        cells = order[:, done:upto].repeat(rows // b, 1)  # unconditional rows reveal their row's cells
        z = h.gather(1, cells[..., None].expand(-1, -1, h.shape[-1])).reshape(-1, h.shape[-1])
        m = upto - done
        x0 = temperature * torch.randn(b * m, dim, generator=g).to(device)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = model.mar_head(x.repeat(rows // b, 1), t.repeat(rows // b), z).float()
            return _split(v, b * m, cfg_scale)

        new = integrate(velocity, x0, steps, method).reshape(b, m, dim)
        mine = order[:, done:upto]
        known.scatter_(1, mine[..., None].expand(-1, -1, dim), new)
        masked.scatter_(1, mine, False)
        done = upto
    return known


def _next_scale(decoder: Decoder, b: int, grid, g, *, steps, method, cfg_scale, temperature, top_k, top_p, **_):
    """VAR: one pass per scale. Conditional and unconditional rows share every scale's guided
    result as the next block's input. Returns (b, N, D) patches or (b, N) codes with the offset."""
    model, rows, device = decoder.model, decoder.rows, decoder.device
    cfg, p = model.cfg, model.cfg.patch_size
    full, dim, discrete = cfg.latent_size // p, cfg.patch_dim, cfg.mode == "discrete"
    decoder.prefill()  # [boi] predicts nothing here: the first block's own outputs do
    start = decoder.next_position.clone()
    f = torch.zeros(b, cfg.latent_channels, cfg.latent_size, cfg.latent_size, device=device)
    ids = torch.full((b, cfg.var_scales[0] ** 2), cfg.boi_id, dtype=torch.long, device=device)
    for k, side in enumerate(cfg.var_scales):
        positions = start[:, None, None] + scales.scale_positions(0, side, full).to(device)  # (rows, s*s, 3)
        m = side * side
        if discrete:
            h = decoder.append(ids.repeat(rows // b, 1), pb.IMAGE, positions, span=True, grid=(1, side, side))
            logits = model.lm_head(h.reshape(rows * m, -1))[:, cfg.code_offset:cfg.code_offset + cfg.codebook_size]
            codes = pick(_split(logits.float(), b * m, cfg_scale), temperature, top_k, top_p, g).reshape(b, side, side)
            if k + 1 < len(cfg.var_scales):
                ids = scales.upsample_codes(codes, cfg.var_scales[k + 1]).reshape(b, -1) + cfg.code_offset
            continue
        inputs = torch.stack([pb.patchify(x, p)[0] for x in scales.downsample(f, side * p)])  # (b, m, D)
        h = decoder.append(torch.zeros(rows, m, dtype=torch.long, device=device), pb.IMAGE, positions,
                           latents=inputs.repeat(rows // b, 1, 1), span=True, grid=(1, side, side))
        z = h.reshape(rows * m, -1)
        x0 = temperature * torch.randn(b * m, dim, generator=g).to(device)

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = model.mar_head(x.repeat(rows // b, 1), t.repeat(rows // b), z).float()
            return _split(v, b * m, cfg_scale)

        token = integrate(velocity, x0, steps, method).reshape(b, m, dim)
        token = torch.stack([pb.unpatchify(t, (1, side, side), p) for t in token])  # (b, C, side*p, side*p)
        f = f + scales.upsample(token, cfg.latent_size)
    decoder.next_position = start + full  # text after the image resumes past it, as the packer lays it out
    if discrete:
        return codes.reshape(b, -1) + cfg.code_offset
    return torch.stack([pb.patchify(x, p)[0] for x in f])


def _discrete(decoder: Decoder, b: int, grid, g, *, cfg_scale, temperature, top_k, top_p, **_):
    model, rows, device = decoder.model, decoder.rows, decoder.device
    cfg = model.cfg
    coords = pb.grid_positions(0, grid).to(device)
    start = decoder.next_position.clone()
    h = decoder.prefill()
    codes = []
    for i in range(len(coords)):
        logits = model.lm_head(h)[:, cfg.code_offset:cfg.code_offset + cfg.codebook_size].float()
        ids = pick(_split(logits, b, cfg_scale), temperature, top_k, top_p, g) + cfg.code_offset
        codes.append(ids)
        if i == len(coords) - 1:
            break
        positions = (start[:, None] + coords[i]).unsqueeze(1)
        h = decoder.append(ids.repeat(rows // b)[:, None], _modality(grid), positions, span=i == 0, grid=grid)[:, -1]
    return torch.stack(codes, 1)  # (b, N) with the offset

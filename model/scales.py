"""Next-scale prediction (VAR, Tian et al. 2024): an image as a sequence of scales, coarse to fine.

`model.var_scales` = (s_1, ..., s_K) token grids, the last one the full grid (latent_size /
patch_size). In the transformer a generated image is K blocks, block k holding s_k x s_k tokens;
each block is its own attention span, so the id-derived masks (model/masks.py) make attention
block-causal across scales and bidirectional inside one. The transformer output at every token
of block k predicts that token of scale k:

  continuous (mode="mar")   scale k is VAR's residual: r_0 = latent, token_k = area-downsampled
                            r_{k-1}, r_k = r_{k-1} - upsampled token_k; the latent is the sum of the
                            upsampled tokens (exact: the last scale is the full grid). Block k's
                            input is the sum so far, f_{k-1}, area-resampled to s_k (f_0 = 0); the
                            per-token flow head (MARHead) predicts token_k from each output.
  discrete (mode="discrete") scale k's codes quantise the area-downsampled code vectors of the
                            image tokenizer (a pyramid of its own codebook; the finest scale is the
                            tokenizer's code map itself, so discrete VAR decodes as discrete AR
                            does). Block k's inputs are scale k-1's codes, nearest-upsampled (block
                            1: the [boi] id); cross-entropy on scale k's codes.

VAR trains its tokenizer for multi-scale residual quantisation; nodd's VQ/FSQ tokenizers are
single-scale, and a codebook fitted to whole vectors quantises small residuals to noise, so the
discrete pyramid re-quantises downsampled vectors instead of residuals.

Rotary positions put every scale on the full grid: cell (i, j) of scale s sits at the centre
((i + 1/2) S/s, (j + 1/2) S/s), all scales at the image's start on the t axis, and a learned
level embedding tells the scales apart (VAR's lvl_embed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def _resample(x: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """(C, H, W) or (B, C, H, W) -> same at side x side."""
    batched = x.dim() == 4
    x = x if batched else x[None]
    if tuple(x.shape[-2:]) != (side, side):
        x = F.interpolate(x, size=(side, side), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
    return x if batched else x[0]


def downsample(x: torch.Tensor, side: int) -> torch.Tensor:
    """Area (box) downsampling, as VAR."""
    return _resample(x, side, "area")


def upsample(x: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear upsampling of a scale's tokens back to the full grid (VAR: bicubic)."""
    return _resample(x, side, "bilinear")


def residual_scales(latent: torch.Tensor, sides: Sequence[int]) -> list[torch.Tensor]:
    """(C, H, W) latent -> the K scale tokens [(C, s_k, s_k)], sides in latent pixels. Their
    upsampled sum is the latent (the last scale takes the remaining residual whole)."""
    full, residual, out = latent.shape[-1], latent.float(), []
    for side in sides:
        token = downsample(residual, side)
        out.append(token)
        residual = residual - upsample(token, full)
    return out


def scale_inputs(tokens: Sequence[torch.Tensor], full: int) -> list[torch.Tensor]:
    """Scale tokens [(C, s_k, s_k)] -> each block's input: the sum of the coarser scales upsampled
    to the full grid (f_{k-1}), area-resampled to s_k; zeros for the first block."""
    inputs, f = [], torch.zeros(*tokens[0].shape[:-2], full, full, dtype=tokens[0].dtype, device=tokens[0].device)
    for token in tokens:
        inputs.append(downsample(f, token.shape[-1]))
        f = f + upsample(token, full)
    return inputs


def reconstruct(tokens: Sequence[torch.Tensor], full: int) -> torch.Tensor:
    """Scale tokens -> the latent (C, H, W) or (B, C, H, W): the sum of their upsampled values."""
    return sum(upsample(t, full) for t in tokens)


def code_pyramid(codes: torch.Tensor, sides: Sequence[int], to_vectors: Callable, to_codes: Callable) -> list[torch.Tensor]:
    """(H, W) code ids -> [(s_k, s_k)] ids: the code vectors (`to_vectors`: (1, H, W) ids ->
    (1, D, H, W)) area-downsampled to each side and re-quantised (`to_codes`: (1, D, s, s) ->
    (1, s, s) ids); the full side keeps the codes as they are."""
    full = codes.shape[-1]
    vectors = to_vectors(codes[None].long()).float()
    return [codes.long() if side == full else to_codes(downsample(vectors, side))[0].long() for side in sides]


def upsample_codes(codes: torch.Tensor, side: int) -> torch.Tensor:
    """(..., s, s) ids -> (..., side, side) by nearest neighbour: the next block's inputs."""
    s = codes.shape[-1]
    index = torch.div(torch.arange(side, device=codes.device) * s, side, rounding_mode="floor")
    return codes[..., index[:, None], index[None, :]]


def scale_positions(start: int | torch.Tensor, side: int, full: int) -> torch.Tensor:
    """(side*side, 3) rotary positions of one scale block of an image starting at `start`: t at the
    start, (h, w) the centres of its cells on the full grid, raster order."""
    centre = torch.div((2 * torch.arange(side) + 1) * full, 2 * side, rounding_mode="floor")
    hh, ww = torch.meshgrid(centre, centre, indexing="ij")
    offsets = torch.stack([torch.zeros_like(hh), hh, ww], -1).reshape(-1, 3)
    return offsets + start


def scale_tokens(sides: Sequence[int]) -> int:
    """Tokens of one image in next-scale order."""
    return sum(s * s for s in sides)


def side_levels(sides_of_tokens: torch.Tensor, span_ids: torch.Tensor, sides: Sequence[int]) -> torch.Tensor:
    """(B, T) grid side of each token's span -> (B, T) its scale level (index in `sides`; other
    sides, such as an understanding image's full grid, count as the finest), -1 for text."""
    largest = int(sides_of_tokens.max()) if sides_of_tokens.numel() else 0
    table = torch.full((max(max(sides), largest) + 1,), len(sides) - 1,
                       dtype=torch.long, device=span_ids.device)
    table[torch.tensor(list(sides), device=span_ids.device)] = torch.arange(len(sides), device=span_ids.device)
    return torch.where(span_ids > 0, table[sides_of_tokens.clamp(min=0)], -1)


def token_levels(span_ids: torch.Tensor, span_grid: torch.Tensor, sides: Sequence[int]) -> torch.Tensor:
    """(B, T) span ids (1.. within each row) and the (S, 3) grids of all spans in batch order ->
    (B, T) scale level of each image token, -1 for text."""
    if not len(span_grid):
        return torch.full_like(span_ids, -1)
    per_row = span_ids.amax(1)
    first = per_row.cumsum(0) - per_row  # index in span_grid of each row's span 1
    index = (first[:, None] + span_ids - 1).clamp(min=0)
    return side_levels(span_grid[:, 1].to(span_ids.device)[index], span_ids, sides)

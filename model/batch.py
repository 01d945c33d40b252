"""The packed batch every engine consumes, and the packer that builds it from documents.

A document is one of three tasks:

  text        [bos] text [eos]                               loss: text
  generate    [bos] caption [boi] <image> [eoi] [eos]        loss: caption (text) + image
  understand  [bos] [boi] <image> [eoi] caption [eos]        loss: caption (understanding)

<image> is a latent (C, H, W) or a video latent (T, C, H, W) cut into (H/p)*(W/p) patches per
frame (continuous modes), or a grid of code ids (discrete mode). Documents are packed into rows
without splitting; attention masks are never stored, only the ids they are derived from
(model/masks.py): documents never see each other, text is causal, one image's tokens see each
other bidirectionally in transfusion mode and masked mar, and causally otherwise.

Positions are 3-D (t, h, w) multimodal RoPE positions (model/rope.py): a text token at p has
(p, p, p); patch (ti, hi, wi) of an image starting at p0 has (p0+ti, p0+hi, p0+wi); the text after
the image resumes at p0 + max(T, H/p, W/p).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import torch
from einops import rearrange

from core.errors import ConfigError, DataError
from model import scales
from model.config import ModelConfig

TEXT, IMAGE, VIDEO = 0, 1, 2  # modality ids
NO_LOSS, TEXT_LOSS, UNDERSTANDING_LOSS, IMAGE_LOSS = 0, 1, 2, 3  # target kinds
IGNORE = -100
Task = Literal["text", "generate", "understand"]


@dataclass
class Document:
    """One training document before packing. `text_ids` carry no special tokens."""

    task: Task
    text_ids: list[int]
    latent: torch.Tensor | np.ndarray | None = None  # (C, H, W) or (T, C, H, W), continuous modes
    codes: torch.Tensor | np.ndarray | None = None  # (H, W) or (T, H, W), discrete mode
    # discrete next-scale (model.var_scales): the code map at every scale, coarse to fine
    # (model/scales.py code_pyramid; the loader makes it with the image tokenizer)
    scale_codes: list | None = None


@dataclass
class PackedBatch:
    """B rows of T tokens. N = number of latent tokens in the whole batch, in row-major order."""

    tokens: torch.Tensor  # (B, T) long: text ids, code ids (discrete), 0 at latent patches
    modality: torch.Tensor  # (B, T) long: TEXT / IMAGE / VIDEO
    segment_ids: torch.Tensor  # (B, T) long: document id within the row, 0 = padding
    span_ids: torch.Tensor  # (B, T) long: image span id within the row (>= 1), 0 = not an image token
    positions: torch.Tensor  # (B, T, 3) long: (t, h, w) rotary positions
    targets: torch.Tensor  # (B, T) long: id of the next token to predict here, IGNORE = none
    target_kind: torch.Tensor  # (B, T) long: NO_LOSS / TEXT_LOSS / UNDERSTANDING_LOSS / IMAGE_LOSS
    latents: torch.Tensor | None  # (N, D) float: clean patch vectors (continuous modes)
    latent_loss: torch.Tensor  # (N,) bool: latent tokens that carry the image loss: those of generated
    #                           images (masked mar: the masked ones; they enter as the mask embedding)
    times: torch.Tensor | None  # (N,) float: diffusion time per latent token, 1 = clean (transfusion)
    span_grid: torch.Tensor  # (S, 3) long: (T, H/p, W/p) of every span, in batch order
    latent_targets: torch.Tensor | None = None  # (N, D) continuous next-scale (var_scales): the scale token
    #                           each latent token's head predicts (its input, `latents`, is the coarser sum)

    @property
    def latent_mask(self) -> torch.Tensor:
        """(B, T) bool: positions holding an image/video token."""
        return self.modality != TEXT

    @property
    def num_tokens(self) -> int:
        return int((self.segment_ids > 0).sum())

    def to(self, device: torch.device | str) -> "PackedBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PackedBatch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def patchify(latent: torch.Tensor, p: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(C, H, W) or (T, C, H, W) -> ((T*H/p*W/p, C*p*p) patches in raster order, (T, H/p, W/p))."""
    if latent.dim() == 3:
        latent = latent[None]
    if latent.dim() != 4:
        raise DataError(f"a latent must be (C, H, W) or (T, C, H, W), got shape {tuple(latent.shape)}")
    t, _, h, w = latent.shape
    if h % p or w % p:
        raise ConfigError(f"model.patch_size={p} does not divide the latent grid {h}x{w}; "
                          f"pick a patch size that divides both")
    c = latent.shape[1]
    # plain view/permute, not einops: the loader patchifies thousands of latents a step
    patches = latent.reshape(t, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    patches = patches.reshape(t * (h // p) * (w // p), c * p * p)
    return patches, (t, h // p, w // p)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], p: int, video: bool = False) -> torch.Tensor:
    """Inverse of `patchify`: (T*h*w, C*p*p) -> (C, H, W), or (T, C, H, W) when `video`."""
    t, h, w = grid
    latent = rearrange(patches, "(t h w) (c p1 p2) -> t c (h p1) (w p2)", t=t, h=h, w=w, p1=p, p2=p)
    return latent if video else latent[0]


def grid_positions(start: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """(T*h*w, 3) positions of an image/video span that starts at `start`, raster order."""
    return _grid_offsets(*grid) + start


_TEXT_POSITIONS = torch.arange(1024).unsqueeze(-1).expand(-1, 3)


def _text_positions(start: int, n: int) -> torch.Tensor:
    """(n, 3) positions (p, p, p) from `start`: a slice of one shared table (grown on demand)."""
    global _TEXT_POSITIONS
    if start + n > len(_TEXT_POSITIONS):
        _TEXT_POSITIONS = torch.arange(2 * (start + n)).unsqueeze(-1).expand(-1, 3)
    return _TEXT_POSITIONS[start:start + n]


@functools.lru_cache(maxsize=64)
def _grid_offsets(t: int, h: int, w: int) -> torch.Tensor:
    # cached: the loader asks for the same few grids once per image, thousands of times a step
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([tt, hh, ww], -1).reshape(-1, 3)


@dataclass
class _Encoded:
    """One document laid out as token columns (before packing)."""

    tokens: list[int]
    modality: list[int]
    span: list[int]  # 1-based span index inside the document, 0 = text
    positions: torch.Tensor  # (L, 3)
    kinds: list[int]  # target kind of the prediction made AT each position
    latents: list[torch.Tensor]  # per span (n_i, D)
    grids: list[tuple[int, int, int]]
    generated: list[bool]  # per span: does it carry the image loss
    own: list[int] = field(default_factory=list)  # per position: a target read at the position itself
    #                                                (next-scale codes), IGNORE = none
    targets: list[torch.Tensor] = field(default_factory=list)  # per span (n_i, D): what the head predicts
    #                                                (next-scale: the residual; otherwise the latents)


def best_fit(lengths: list[int], seq_len: int, rows: int | None = None) -> tuple[list[list[int]], list[int]]:
    """Best-fit decreasing: document indices, longest first (ties in order), each into the row whose
    free space it fills most tightly (the first such row on ties). With `rows=None` a document that
    fits nowhere opens a new row; with a fixed number of rows it is left over instead. Returns
    (indices per row, indices left over longest first)."""
    placed: list[list[int]] = [[] for _ in range(rows or 0)]
    free = [seq_len] * (rows or 0)
    left_over: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # stable: deterministic ties
        fits = [r for r in range(len(free)) if free[r] >= lengths[i]]
        if fits:
            best = min(fits, key=lambda r: free[r] - lengths[i])
        elif rows is None:
            placed.append([])
            free.append(seq_len)
            best = len(free) - 1
        else:
            left_over.append(i)
            continue
        placed[best].append(i)
        free[best] -= lengths[i]
    return placed, left_over


class Packer:
    """Turns documents into a `PackedBatch` for one `ModelConfig` (special ids, patching, order)."""

    def __init__(self, cfg: ModelConfig, bos_id: int, eos_id: int, pad_id: int = 0):
        self.cfg, self.bos, self.eos, self.pad = cfg, bos_id, eos_id, pad_id

    def pack(self, documents: list[Document], seq_len: int | None = None,
             generator: torch.Generator | None = None) -> PackedBatch:
        """`seq_len=None`: one row holding every document in order (no padding). Otherwise as many
        rows of exactly `seq_len` tokens as `best_fit` needs, never splitting a document."""
        if not documents:
            raise DataError("cannot pack an empty list of documents")
        if seq_len is None:
            return self.collate([documents], None, generator)
        lengths = [self.length(d) for d in documents]
        for n in lengths:
            if n > seq_len:
                raise DataError(f"a {n}-token document does not fit seq_len={seq_len}; raise seq_len or "
                                "shorten captions (images cannot be split)")
        rows, _ = best_fit(lengths, seq_len)
        return self.collate([[documents[i] for i in row] for row in rows], seq_len, generator)

    def collate(self, rows: list[list[Document]], seq_len: int | None,
                generator: torch.Generator | None = None) -> PackedBatch:
        """Documents already assigned to rows (by `best_fit`), each row in order; `seq_len=None`
        makes the rows as wide as the longest."""
        encoded = [[self.encode(d, generator) for d in row] for row in rows]
        longest = max(sum(len(d.tokens) for d in row) for row in encoded)
        if seq_len is not None and longest > seq_len:
            raise DataError(f"a row of {longest} tokens does not fit seq_len={seq_len}")
        return self._collate(encoded, longest if seq_len is None else seq_len, generator)

    def length(self, doc: Document) -> int:
        """Tokens `doc` will take, without encoding it: specials + text + image tokens."""
        specials = {"text": 2, "generate": 4, "understand": 4}.get(doc.task)
        if specials is None:
            raise DataError(f"unknown document task {doc.task!r}; expected text, generate or understand")
        if doc.task == "text":
            return specials + len(doc.text_ids)
        if doc.task == "generate" and self.cfg.next_scale_images:
            return specials + len(doc.text_ids) + scales.scale_tokens(self.cfg.var_scales)
        image = doc.codes if self.cfg.mode == "discrete" else doc.latent
        if image is None:
            raise DataError(f"{self.cfg.mode} mode needs {'codes' if self.cfg.mode == 'discrete' else 'latents'}")
        shape = tuple(image.shape)
        p = self.cfg.patch_size if self.cfg.mode != "discrete" else 1
        frames = shape[0] if len(shape) == (3 if self.cfg.mode == "discrete" else 4) else 1
        return specials + len(doc.text_ids) + frames * (shape[-2] // p) * (shape[-1] // p)

    def encode(self, doc: Document, generator: torch.Generator | None = None) -> _Encoded:
        cfg = self.cfg
        if doc.task not in ("text", "generate", "understand"):
            raise DataError(f"unknown document task {doc.task!r}; expected text, generate or understand")
        out = _Encoded([], [], [], torch.zeros(0, 3, dtype=torch.long), [], [], [], [])
        pos: list[torch.Tensor] = []
        cursor = 0

        def add_text(ids: list[int], kind: int) -> None:
            nonlocal cursor
            for i in ids:
                out.tokens.append(int(i))
                out.modality.append(TEXT)
                out.span.append(0)
                out.kinds.append(kind)
                out.own.append(IGNORE)
            pos.append(_text_positions(cursor, len(ids)))
            cursor += len(ids)

        def add_image(generated: bool) -> None:
            nonlocal cursor
            if generated and cfg.next_scale_images:
                pos.extend(self._add_scales(doc, out, cursor))
                cursor += cfg.latent_size // cfg.patch_size
                return
            tokens, vectors, grid, modality = self._image_tokens(doc)
            span_positions = grid_positions(cursor, grid)
            if cfg.mode == "mar" and cfg.mar_order == "random" and generated:
                order = torch.randperm(len(span_positions), generator=generator)
                span_positions, vectors = span_positions[order], vectors[order] if vectors is not None else None
            out.tokens.extend(tokens)
            out.modality.extend([modality] * len(tokens))
            out.span.extend([len(out.grids) + 1] * len(tokens))
            # A latent token predicts the next latent token (mar in order, discrete); the last one
            # predicts nothing. Transfusion and masked mar put the image loss on the latents themselves.
            kind = IMAGE_LOSS if generated and cfg.next_token_images else NO_LOSS
            out.kinds.extend([kind] * (len(tokens) - 1) + [NO_LOSS])
            out.own.extend([IGNORE] * len(tokens))
            pos.append(span_positions)
            out.grids.append(grid)
            out.generated.append(generated)
            if vectors is not None:
                out.latents.append(vectors)
                out.targets.append(vectors)
            cursor += max(grid)

        if doc.task == "text":
            add_text([self.bos, *doc.text_ids], TEXT_LOSS)
            add_text([self.eos], NO_LOSS)
        elif doc.task == "generate":
            add_text([self.bos, *doc.text_ids], TEXT_LOSS)
            # [boi] predicts the first image token (image loss in mar/discrete, nothing in transfusion)
            add_text([cfg.boi_id], IMAGE_LOSS if cfg.next_token_images else NO_LOSS)
            add_image(generated=True)
            add_text([cfg.eoi_id], TEXT_LOSS)
            add_text([self.eos], NO_LOSS)
        else:
            add_text([self.bos], NO_LOSS)
            add_text([cfg.boi_id], NO_LOSS)
            add_image(generated=False)
            add_text([cfg.eoi_id, *doc.text_ids], UNDERSTANDING_LOSS)
            add_text([self.eos], NO_LOSS)
        out.positions = torch.cat(pos)
        return out

    def _add_scales(self, doc: Document, out: _Encoded, start: int) -> list[torch.Tensor]:
        """A generated image in next-scale order (model/scales.py): one span per scale; returns
        the blocks' positions. Continuous: inputs are the coarser sum, targets the residual
        tokens. Discrete: inputs are the coarser scale's codes (block 1: [boi]), own targets the
        scale's codes."""
        cfg, p = self.cfg, self.cfg.patch_size
        sides, full = cfg.var_scales, cfg.latent_size // p
        if cfg.mode == "discrete":
            if doc.scale_codes is None or len(doc.scale_codes) != len(sides):
                raise DataError(f"discrete next-scale generation needs the codes at every scale {list(sides)} "
                                "(Document.scale_codes; the loader makes them with the image tokenizer)")
            maps = [torch.as_tensor(np.asarray(c), dtype=torch.long) for c in doc.scale_codes]
            if [tuple(m.shape) for m in maps] != [(s, s) for s in sides]:
                raise DataError(f"scale codes of shapes {[tuple(m.shape) for m in maps]} do not match "
                                f"model.var_scales={list(sides)}")
            if any(int(m.min()) < 0 or int(m.max()) >= cfg.codebook_size for m in maps):
                raise DataError(f"scale codes outside [0, {cfg.codebook_size}): they were made with another "
                                "tokenizer than model.codebook_size says")
            inputs = [torch.full((sides[0], sides[0]), cfg.boi_id - cfg.code_offset)]
            inputs += [scales.upsample_codes(m, s) for m, s in zip(maps[:-1], sides[1:])]
            blocks = [((i + cfg.code_offset).flatten().tolist(), (m + cfg.code_offset).flatten().tolist(), None, None)
                      for i, m in zip(inputs, maps)]
        else:
            latent = torch.as_tensor(np.asarray(doc.latent), dtype=torch.float32) if doc.latent is not None else None
            if latent is None or latent.dim() != 3:
                raise DataError("next-scale generation (model.var_scales) needs one image latent (C, H, W) per "
                                "document, not a video or codes")
            self._image_tokens(doc)  # the same checks as every latent (channels)
            tokens = scales.residual_scales(latent, [s * p for s in sides])
            inputs = scales.scale_inputs(tokens, latent.shape[-1])
            blocks = [([0] * s * s, [IGNORE] * s * s, patchify(x, p)[0], patchify(t, p)[0])
                      for s, x, t in zip(sides, inputs, tokens)]
        positions = []
        for side, (ids, own, vectors, targets) in zip(sides, blocks):
            out.tokens.extend(ids)
            out.modality.extend([IMAGE] * len(ids))
            out.span.extend([len(out.grids) + 1] * len(ids))
            out.kinds.extend([IMAGE_LOSS if cfg.mode == "discrete" else NO_LOSS] * len(ids))
            out.own.extend(own)
            out.grids.append((1, side, side))
            out.generated.append(True)
            if vectors is not None:
                out.latents.append(vectors)
                out.targets.append(targets)
            positions.append(scales.scale_positions(start, side, full))
        return positions

    def _image_tokens(self, doc: Document):
        cfg = self.cfg
        if cfg.mode == "discrete":
            if doc.codes is None:
                raise DataError("discrete mode needs image codes (prep with a vq or fsq tokenizer)")
            codes = torch.as_tensor(np.asarray(doc.codes), dtype=torch.long)
            codes = codes[None] if codes.dim() == 2 else codes
            if codes.dim() != 3:
                raise DataError(f"codes must be (H, W) or (T, H, W), got shape {tuple(codes.shape)}")
            if int(codes.min()) < 0 or int(codes.max()) >= cfg.codebook_size:
                raise DataError(f"image codes outside [0, {cfg.codebook_size}): the shards were made with "
                                "another tokenizer than model.codebook_size says")
            grid = tuple(codes.shape)
            return (codes.flatten() + cfg.code_offset).tolist(), None, grid, VIDEO if grid[0] > 1 else IMAGE
        if doc.latent is None:
            raise DataError(f"{cfg.mode} mode needs continuous latents (prep with a kl tokenizer)")
        latent = torch.as_tensor(np.asarray(doc.latent), dtype=torch.float32)
        channels = latent.shape[-3] if latent.dim() >= 3 else -1
        if channels != cfg.latent_channels:
            raise DataError(f"latent of shape {tuple(latent.shape)} has {channels} channels, "
                            f"model.latent_channels={cfg.latent_channels}")
        video = latent.dim() == 4
        vectors, grid = patchify(latent, cfg.patch_size)
        return [0] * len(vectors), vectors, grid, VIDEO if video else IMAGE

    def _collate(self, rows: list[list[_Encoded]], width: int, generator: torch.Generator | None) -> PackedBatch:
        b = len(rows)
        tokens = torch.full((b, width), self.pad, dtype=torch.long)
        modality = torch.zeros(b, width, dtype=torch.long)
        segment = torch.zeros(b, width, dtype=torch.long)
        span = torch.zeros(b, width, dtype=torch.long)
        positions = torch.zeros(b, width, 3, dtype=torch.long)
        kinds = torch.zeros(b, width, dtype=torch.long)
        own = torch.full((b, width), IGNORE, dtype=torch.long)
        latents, latent_targets, grids, spans = [], [], [], []  # spans: (tokens, generated) in batch order
        for r, docs in enumerate(rows):
            if not docs:
                continue
            # one tensor per column and row (not per document): the loader builds ~200 documents a step
            lengths = [len(doc.tokens) for doc in docs]
            end = sum(lengths)
            tokens[r, :end] = torch.tensor(list(itertools.chain.from_iterable(doc.tokens for doc in docs)))
            modality[r, :end] = torch.tensor(list(itertools.chain.from_iterable(doc.modality for doc in docs)))
            kinds[r, :end] = torch.tensor(list(itertools.chain.from_iterable(doc.kinds for doc in docs)))
            own[r, :end] = torch.tensor(list(itertools.chain.from_iterable(doc.own for doc in docs)))
            segment[r, :end] = torch.repeat_interleave(torch.arange(1, len(docs) + 1), torch.tensor(lengths))
            positions[r, :end] = torch.cat([doc.positions for doc in docs])
            local_spans, spans_so_far = [], 0
            for doc in docs:
                local_spans.extend(s + spans_so_far if s > 0 else 0 for s in doc.span)
                spans_so_far += len(doc.grids)
                latent_targets.extend(doc.targets)
                for vectors, grid, generated in zip(doc.latents or [None] * len(doc.grids), doc.grids, doc.generated):
                    if vectors is not None:
                        latents.append(vectors)
                    grids.append(grid)
                    spans.append((math.prod(grid), generated))
            span[r, :end] = torch.tensor(local_spans)
        # Target at i is the token at i+1 (same document); its kind was decided per position above.
        targets = torch.full_like(tokens, IGNORE)
        same_doc = (segment[:, 1:] == segment[:, :-1]) & (segment[:, 1:] > 0)
        has_target = same_doc & (kinds[:, :-1] != NO_LOSS)
        targets[:, :-1] = torch.where(has_target, tokens[:, 1:], IGNORE)
        kinds[:, :-1] = torch.where(has_target, kinds[:, :-1], NO_LOSS)
        kinds[:, -1] = NO_LOSS
        # next-scale codes are predicted at their own position, not the one before
        targets = torch.where(own != IGNORE, own, targets)
        kinds = torch.where(own != IGNORE, IMAGE_LOSS, kinds)
        carries = self._masked if self.cfg.mode == "mar" and self.cfg.mar_order == "masked" else \
            (lambda n, generated, _g: torch.full((n,), generated))
        latent_loss = torch.cat([carries(n, generated, generator) for n, generated in spans]) if spans \
            else torch.zeros(0, dtype=torch.bool)
        packed_latents = torch.cat(latents) if latents else None
        times = None
        if self.cfg.mode == "transfusion" and packed_latents is not None:
            times = torch.cat([sample_times(1, self.cfg.time_sampling, generator).expand(n) if generated
                               else torch.ones(n) for n, generated in spans])
        span_grid = torch.tensor(grids, dtype=torch.long).reshape(-1, 3)
        targets_of_latents = None
        if self.cfg.next_scale_images and self.cfg.mode == "mar" and packed_latents is not None:
            targets_of_latents = torch.cat(latent_targets)
        return PackedBatch(tokens, modality, segment, span, positions, targets, kinds, packed_latents,
                           latent_loss, times, span_grid, targets_of_latents)

    def _masked(self, n: int, generated: bool, generator: torch.Generator | None) -> torch.Tensor:
        """(n,) bool: which tokens of an image masked mar masks (and puts the image loss on). MAR's
        masking ratio: a normal around 1 (std 0.25) clipped to [mar_mask_min, 1], at least one
        token; a random subset of that size. Understanding images are never masked."""
        if not generated:
            return torch.zeros(n, dtype=torch.bool)
        ratio = float((1.0 + 0.25 * torch.randn(1, generator=generator)).clamp(self.cfg.mar_mask_min, 1.0))
        chosen = torch.randperm(n, generator=generator)[:max(1, math.ceil(ratio * n))]
        return torch.zeros(n, dtype=torch.bool).index_fill_(0, chosen, True)


def grid_coordinates(positions: torch.Tensor, span_ids: torch.Tensor) -> torch.Tensor:
    """(B, T, 3) rotary positions -> (t, h, w) offsets inside each token's image span (0 for text):
    the position minus the span's start, which is the smallest position of the span."""
    b, t = span_ids.shape
    slots = int(span_ids.max()) + 1 if span_ids.numel() else 1
    key = (span_ids + torch.arange(b, device=span_ids.device)[:, None] * slots).reshape(-1)
    start = torch.full((b * slots,), torch.iinfo(torch.long).max, dtype=torch.long, device=positions.device)
    start = start.scatter_reduce(0, key, positions[..., 0].reshape(-1), reduce="amin")
    coords = positions - start[key].reshape(b, t, 1)
    return torch.where((span_ids > 0).unsqueeze(-1), coords, 0)


def sample_times(n: int, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) diffusion times in (0, 1): 0 = pure noise, 1 = data."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    return torch.sigmoid(torch.randn(n, generator=generator))  # logit-normal(0, 1), as in SD3

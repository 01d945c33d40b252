"""Incremental decoding state shared by every sampler: B rows of one growing sequence each.

Prompts of different lengths are left-padded (padding is document 0, real tokens document 1, so
the id-derived masks keep padding invisible). `append` runs the model on new tokens only, against
a KV cache, or - with `use_cache=False` - recomputes the whole sequence every call; both give the
same hidden states (tests check it), the cache is just faster.

`commit=False` evaluates a chunk without keeping it (an ODE step over a whole transfusion image
is re-run with new noisy values every step, always against the same cached prompt).
"""

from __future__ import annotations

import torch

from model import batch as pb
from model import scales
from model.attention import KVCache
from model.multimodal import MultimodalModel


class Decoder:
    def __init__(self, model: MultimodalModel, prompts: list[list[int]], max_new: int, use_cache: bool = True):
        cfg, self.model = model.cfg, model
        device = next(model.parameters()).device
        self.device, self.rows = device, len(prompts)
        longest = max(len(p) for p in prompts)
        self.tokens = torch.full((self.rows, longest), 0, dtype=torch.long, device=device)
        self.segment = torch.zeros(self.rows, longest, dtype=torch.long, device=device)
        for r, prompt in enumerate(prompts):
            if prompt:
                self.tokens[r, longest - len(prompt):] = torch.tensor(prompt, device=device)
                self.segment[r, longest - len(prompt):] = 1
        self.modality = torch.zeros_like(self.tokens)
        self.span = torch.zeros_like(self.tokens)
        pos = (self.segment.cumsum(1) - 1).clamp(min=0)
        self.positions = pos.unsqueeze(-1).expand(-1, -1, 3).contiguous()
        self.latents = torch.zeros(self.rows, longest, cfg.patch_dim, device=device)
        self.times = torch.ones(self.rows, longest, device=device)
        self.queries = torch.full((self.rows, longest, 3), -1, dtype=torch.long, device=device)
        self.masked = torch.zeros(self.rows, longest, dtype=torch.bool, device=device)
        self.grids: list[tuple[int, int, int]] = []  # spans of each row, same for every row
        self.next_position = pos[:, -1] + 1  # (B,) where the next token goes
        self.cache = None
        if use_cache:
            dtype = next(model.parameters()).dtype
            self.cache = KVCache(cfg.depth, self.rows, cfg.num_kv_heads, cfg.head_dim, longest + max_new, device, dtype)
        self.pending = longest  # tokens not yet run through the model (the prompt)

    @property
    def length(self) -> int:
        return self.tokens.shape[1]

    def prefill(self, queries: torch.Tensor | None = None) -> torch.Tensor:
        """Run the prompt; returns the (B, W) hidden state at its last position."""
        if queries is not None:
            self.queries[:, -1] = queries
        return self._run(self.pending, commit=True)[:, -1]

    def append(self, tokens: torch.Tensor, modality: int = pb.TEXT, positions: torch.Tensor | None = None,
               latents: torch.Tensor | None = None, times: torch.Tensor | None = None, span: bool = False,
               grid: tuple[int, int, int] | None = None, queries: torch.Tensor | None = None,
               masked: torch.Tensor | None = None, commit: bool = True) -> torch.Tensor:
        """Add L tokens to every row and return their (B, L, W) hidden states.

        tokens (B, L) ids (0 at latent patches); positions (B, L, 3) or None for consecutive text
        positions; latents (B, L, D) and times (B, L) for continuous patches; `span` starts a new
        image span of `grid` (a transfusion image is appended whole, mar tokens one at a time with
        `span` only on the first); queries (B, L, 3) mar random-order target coordinates; masked
        (B, L) bool: masked mar's still-unknown tokens (their input is the mask embedding)."""
        b, n = tokens.shape
        saved = self._snapshot() if not commit else None
        if positions is None:
            positions = (self.next_position[:, None] + torch.arange(n, device=self.device)).unsqueeze(-1).expand(-1, -1, 3)
        span_id = 0
        if modality != pb.TEXT:
            if span:
                self.grids.append(grid)
            span_id = len(self.grids)
        self._extend(tokens, modality, span_id, positions, latents, times, queries, masked)
        if modality == pb.TEXT:
            self.next_position = positions[:, -1, 0] + 1
        elif grid is not None and span:
            self.next_position = self.next_position + max(grid)
        hidden = self._run(n, commit=commit)
        if saved is not None:
            self._restore(saved)
        return hidden

    # ---- internals --------------------------------------------------------------------------
    def _extend(self, tokens, modality, span_id, positions, latents, times, queries, masked) -> None:
        b, n = tokens.shape
        cat = lambda old, new: torch.cat([old, new.to(old.dtype)], 1)  # noqa: E731
        self.tokens = cat(self.tokens, tokens)
        self.segment = cat(self.segment, torch.ones_like(tokens))
        self.modality = cat(self.modality, torch.full_like(tokens, modality))
        self.span = cat(self.span, torch.full_like(tokens, span_id))
        self.positions = cat(self.positions, positions)
        zeros = torch.zeros(b, n, self.latents.shape[-1], device=self.device)
        self.latents = cat(self.latents, latents if latents is not None else zeros)
        self.times = cat(self.times, times if times is not None else torch.ones(b, n, device=self.device))
        q = queries if queries is not None else torch.full((b, n, 3), -1, dtype=torch.long, device=self.device)
        self.queries = cat(self.queries, q)
        self.masked = cat(self.masked, masked if masked is not None else torch.zeros_like(tokens, dtype=torch.bool))
        self.pending = n

    def _snapshot(self):
        names = ("tokens", "segment", "modality", "span", "positions", "latents", "times", "queries", "masked")
        return {k: getattr(self, k) for k in names} | {"grids": list(self.grids), "next_position": self.next_position}

    def _restore(self, saved) -> None:
        for k, v in saved.items():
            setattr(self, k, v)

    def _run(self, n: int, commit: bool) -> torch.Tensor:
        """Hidden states of the last n tokens, through the cache or by recomputing everything."""
        model = self.model
        start = self.length - n if self.cache is not None else 0
        sl = slice(start, self.length)
        tokens, modality = self.tokens[:, sl], self.modality[:, sl]
        is_latent = modality != pb.TEXT
        latents = times = None
        if model.cfg.mode != "discrete" and bool(is_latent.any()):
            latents, times = self.latents[:, sl][is_latent], self.times[:, sl][is_latent]
        span_grid = self._span_grid(self.span[:, sl])
        coords = None
        if model.patch_position is not None:  # over the whole sequence: a span may begin before sl
            coords = pb.grid_coordinates(self.positions, self.span)[:, sl]
        levels = None
        if model.scale_embedding is not None:
            sides = torch.tensor([0] + [g[1] for g in self.grids], device=self.device)[self.span[:, sl]]
            levels = scales.side_levels(sides, self.span[:, sl], model.cfg.var_scales)
        h = model.embed(tokens, modality, latents, span_grid, times, self.queries[:, sl], coords, self.masked[:, sl],
                        levels)
        if self.cache is not None:
            ctx = model.context(self.segment, self.span, self.positions, cache=self.cache, query_len=n)
        else:
            ctx = model.context(self.segment, self.span, self.positions)
        h = model.trunk(h, ctx)
        if self.cache is not None and commit:
            self.cache.advance(n)
        return h[:, -n:]

    def _span_grid(self, span: torch.Tensor) -> torch.Tensor:
        """Grids of the spans present in `span`, in row-major batch order (for the adapters)."""
        ids = [s for s in range(1, len(self.grids) + 1) if bool((span == s).any())]
        grids = [self.grids[s - 1] for _ in range(self.rows) for s in ids]
        return torch.tensor(grids, dtype=torch.long).reshape(-1, 3)

"""Text sampling (greedy, temperature, top-k, top-p) with a KV cache, and image captioning.

    ids = generate_text(model, [prompt_ids], max_new_tokens=32, eos_id=tok.eos_id, top_k=20, seed=0)
    ids = caption(model, latents_or_codes, bos_id=tok.bos_id, eos_id=tok.eos_id)
"""

from __future__ import annotations

import numpy as np
import torch

from model import batch as pb
from model.multimodal import MultimodalModel
from model.sampling.decoder import Decoder


def pick(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def generate_text(model: MultimodalModel, prompts: list[list[int]], max_new_tokens: int, eos_id: int,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                  use_cache: bool = True) -> list[list[int]]:
    """Continue each prompt (ids including bos) until eos or `max_new_tokens`; returns new ids."""
    decoder = Decoder(model, prompts, max_new_tokens, use_cache)
    return _continue(decoder, decoder.prefill(), max_new_tokens, eos_id, temperature, top_k, top_p, seed)


@torch.no_grad()
def caption(model: MultimodalModel, images: torch.Tensor | np.ndarray, bos_id: int, eos_id: int,
            max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
            seed: int = 0, use_cache: bool = True) -> list[list[int]]:
    """Describe images: latents (B, C, H, W) / (B, T, C, H, W), or codes (B, H, W) / (B, T, H, W)."""
    cfg = model.cfg
    images = torch.as_tensor(np.asarray(images))
    rows = len(images)
    if cfg.mode == "discrete":
        grid = tuple(images.shape[1:]) if images.dim() == 4 else (1, *images.shape[1:])
        tokens = images.reshape(rows, -1).long() + cfg.code_offset
        latents = None
    else:
        patches = [pb.patchify(image.float(), cfg.patch_size) for image in images]
        grid = patches[0][1]
        latents = torch.stack([p for p, _ in patches])
        tokens = torch.zeros(latents.shape[:2], dtype=torch.long)
    n = tokens.shape[1]
    decoder = Decoder(model, [[bos_id, cfg.boi_id]] * rows, n + 1 + max_new_tokens, use_cache)
    device = decoder.device
    decoder.prefill()
    start = decoder.next_position
    positions = start[:, None, None] + pb.grid_positions(0, grid).to(device)
    modality = pb.VIDEO if grid[0] > 1 else pb.IMAGE
    decoder.append(tokens.to(device), modality, positions, latents.to(device) if latents is not None else None,
                   span=True, grid=grid)
    h = decoder.append(torch.full((rows, 1), cfg.eoi_id, device=device))[:, -1]
    return _continue(decoder, h, max_new_tokens, eos_id, temperature, top_k, top_p, seed)


def _continue(decoder: Decoder, h: torch.Tensor, max_new_tokens: int, eos_id: int, temperature: float,
              top_k: int, top_p: float, seed: int) -> list[list[int]]:
    model, g = decoder.model, torch.Generator().manual_seed(seed)
    text_vocab = model.cfg.text_vocab_size
    out = [[] for _ in range(decoder.rows)]
    done = torch.zeros(decoder.rows, dtype=torch.bool)
    for step in range(max_new_tokens):
        logits = model.lm_head(h)[:, :text_vocab]  # text only: never start an image here
        ids = pick(logits, temperature, top_k, top_p, g).cpu()
        for r in range(decoder.rows):
            if not done[r]:
                out[r].append(int(ids[r]))
        done |= ids == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        h = decoder.append(ids[:, None].to(decoder.device))[:, -1]
    return [ids[:-1] if ids and ids[-1] == eos_id else ids for ids in out]

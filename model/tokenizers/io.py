"""Save / load an ImageTokenizer as a directory with a content fingerprint.

Layout of a tokenizer directory:
    tokenizer.safetensors   every tensor of the state dict
    tokenizer_config.json   {"format_version": 1, "config": TokenizerConfig.to_dict()}
    fingerprint.txt         sha256 hex of the canonical config JSON and the tensors

The fingerprint hashes tensor names, dtypes, shapes and raw bytes (names sorted), not the
safetensors file bytes, so it identifies what the tokenizer computes independently of file
layout. Token shards record it, so tokens from different tokenizers are never mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import ConfigError, DataError
from core.files import atomic_path, write_text_atomic

from .autoencoder import ImageTokenizer
from .config import TokenizerConfig

FORMAT_VERSION = 1
WEIGHTS_FILE = "tokenizer.safetensors"
CONFIG_FILE = "tokenizer_config.json"
FINGERPRINT_FILE = "fingerprint.txt"
_HOW_TO_CREATE = "create one with `nodd tokenizer train --config configs/tokenizer/shapes_kl.toml`"


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    # Reinterpret as bytes so every dtype (bfloat16 included, which numpy lacks) hashes the same way.
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def compute_fingerprint(config_dict: dict, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 hex over the canonical config JSON, then each tensor (names sorted): name, dtype, shape, bytes."""
    h = hashlib.sha256()
    h.update(b"nodd-image-tokenizer\0")
    h.update(_canonical_json(config_dict))
    for name in sorted(tensors):
        t = tensors[name]
        h.update(b"\0" + name.encode("utf-8") + b"\0")
        h.update(f"{str(t.dtype).removeprefix('torch.')}:{list(t.shape)}".encode("ascii"))
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _state_tensors(tokenizer: ImageTokenizer) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors sharing storage, and the file must not alias live weights.
    return {k: v.detach().cpu().contiguous().clone() for k, v in tokenizer.state_dict().items()}


def save_tokenizer(tokenizer: ImageTokenizer, out_dir: str | os.PathLike) -> str:
    """Write tokenizer.safetensors, tokenizer_config.json and fingerprint.txt to out_dir; return the fingerprint."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_dict = tokenizer.config.to_dict()
    tensors = _state_tensors(tokenizer)
    fingerprint = compute_fingerprint(config_dict, tensors)
    # Each file atomically, the fingerprint last: a crash never leaves a half-written tokenizer.
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format_version": str(FORMAT_VERSION), "fingerprint": fingerprint})
    config_text = json.dumps({"format_version": FORMAT_VERSION, "config": config_dict}, indent=2, sort_keys=True)
    write_text_atomic(out / CONFIG_FILE, config_text + "\n")
    write_text_atomic(out / FINGERPRINT_FILE, fingerprint + "\n")
    return fingerprint


def _resolve_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file():  # accept a path to any of the three files
        p = p.parent
    if not p.is_dir():
        raise DataError(
            f"no tokenizer directory at {p}: expected a directory holding {WEIGHTS_FILE}, {CONFIG_FILE} "
            f"and {FINGERPRINT_FILE} (written by save_tokenizer); {_HOW_TO_CREATE}"
        )
    missing = [f for f in (WEIGHTS_FILE, CONFIG_FILE, FINGERPRINT_FILE) if not (p / f).is_file()]
    if missing:
        raise DataError(
            f"tokenizer at {p} is incomplete: missing {missing}; expected {WEIGHTS_FILE}, {CONFIG_FILE} "
            f"and {FINGERPRINT_FILE} (written by save_tokenizer); {_HOW_TO_CREATE}"
        )
    return p


def _read_dir(p: Path) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config dict, tensors, stored fingerprint); DataError on unreadable files."""
    try:
        meta = json.loads((p / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"tokenizer at {p} is corrupt or was modified: {CONFIG_FILE} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or "config" not in meta:
        raise DataError(f"tokenizer at {p} is corrupt or was modified: {CONFIG_FILE} lacks a 'config' table")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"tokenizer at {p} has format_version {version!r}, this nodd reads {FORMAT_VERSION}; "
            "re-save it with a matching nodd version or retrain it"
        )
    try:
        tensors = load_file(str(p / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"tokenizer at {p} is corrupt or was modified: cannot read {WEIGHTS_FILE} ({e})") from e
    stored = (p / FINGERPRINT_FILE).read_text().strip()
    return meta["config"], tensors, stored


def _verify(p: Path, config_dict: dict, tensors: dict[str, torch.Tensor], stored: str) -> str:
    actual = compute_fingerprint(config_dict, tensors)
    if actual != stored:
        raise DataError(
            f"tokenizer at {p} is corrupt or was modified: {FINGERPRINT_FILE} says {stored[:16]}..., "
            f"the config and weights hash to {actual[:16]}...; restore it from its source or retrain it"
        )
    return actual


def load_tokenizer(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> ImageTokenizer:
    """Load a tokenizer directory saved by save_tokenizer, verify its fingerprint, return it in eval mode."""
    p = _resolve_dir(path)
    config_dict, tensors, stored = _read_dir(p)
    _verify(p, config_dict, tensors, stored)
    try:
        config = TokenizerConfig.from_dict(config_dict)
    except ConfigError as e:
        raise DataError(f"tokenizer at {p} has an invalid config: {e}") from e
    tokenizer = ImageTokenizer(config)
    try:
        tokenizer.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise DataError(f"tokenizer at {p} does not match its config (weights from another model?): {e}") from e
    return tokenizer.to(map_location).eval()


def tokenizer_fingerprint(path_or_tokenizer: str | os.PathLike | ImageTokenizer) -> str:
    """Fingerprint of a saved tokenizer directory (recomputed and checked against fingerprint.txt)
    or of an in-memory ImageTokenizer (what save_tokenizer would write)."""
    if isinstance(path_or_tokenizer, ImageTokenizer):
        return compute_fingerprint(path_or_tokenizer.config.to_dict(), _state_tensors(path_or_tokenizer))
    p = _resolve_dir(path_or_tokenizer)
    return _verify(p, *_read_dir(p))

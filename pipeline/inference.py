"""Use a trained run: load it, export consolidated weights, generate images, caption images.

    nodd export RUN [--out DIR]                      model.safetensors + model.json (pipeline/export.py)
    nodd sample --run RUN --prompt "a red circle" [--n 4] [--steps 20] [--cfg 3] [--seed 0]
    nodd caption --run RUN IMAGE [IMAGE ...]

RUN is a run directory (its newest checkpoint), a checkpoint or an export folder. Checkpoints
hold an engine-neutral export (step-N/export/), so any engine's run is sampled by the same code;
older checkpoints without one are read through the native engine's DCP payload. Latents are normalised per
channel in training (pipeline/data/samples.py); the statistics travel with the export so samples
are de-normalised before the image tokenizer decodes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.errors import DataError
from model.multimodal import MultimodalModel
from pipeline.data.samples import LatentNorm
from pipeline.export import (
    EXPORT_VERSION,
    META,
    bundle_tokenizers,
    bundled_paths,
    is_export,
    legacy_ffn,
    model_config,
    model_from_weights,
    read_export,
    run_meta,
    write_export,
)
from pipeline.train.checkpoint import EXPORT_DIR, LAST_FUSED_FFN_FORMAT, Checkpointer


class LoadedRun:
    """A model ready for sampling plus what it needs around it (tokenizers, latent statistics)."""

    def __init__(self, model: MultimodalModel, meta: dict):
        from model.tokenizers import load_text_tokenizer

        self.model, self.meta = model.eval(), meta
        self.text = load_text_tokenizer(meta["text_tokenizer"])
        self.norm = LatentNorm.from_dict(meta["latent_norm"]) if meta.get("latent_norm") else None
        self._image_tokenizer = None

    @property
    def image_tokenizer(self):
        if self._image_tokenizer is None:
            from model.tokenizers import load_image_tokenizer

            if not self.meta.get("image_tokenizer"):
                raise DataError("this run's shards record no image tokenizer; cannot decode images")
            self._image_tokenizer = load_image_tokenizer(self.meta["image_tokenizer"]).eval()
        return self._image_tokenizer

    @property
    def image_size(self) -> int:
        """Pixels per side the image tokenizer works at (nodd tokenizers and diffusers VAEs)."""
        tok = self.image_tokenizer
        return getattr(tok, "image_size", None) or tok.config.image_size

    def normalise(self, latent: torch.Tensor) -> torch.Tensor:
        return self.norm.normalise(latent) if self.norm is not None else latent

    def denormalise(self, latent: torch.Tensor) -> torch.Tensor:
        return self.norm.denormalise(latent) if self.norm is not None else latent


def load_run(path: str | Path) -> LoadedRun:
    """An export folder, a checkpoint, or a run directory (its newest finished checkpoint)."""
    path = Path(path)
    if is_export(path):
        weights, meta = read_export(path)
        return LoadedRun(model_from_weights(model_config(meta), weights), bundled_paths(meta, path))
    if (path / "meta.json").is_file() and path.parent.name == "checkpoints":
        checkpoint = path
    else:
        if not (path / "train_config.toml").is_file():
            raise DataError(f"{path} is neither a run directory (train_config.toml), a checkpoint nor an export "
                            f"({META})")
        finished = Checkpointer(path, 1, 0).finished()
        if not finished:
            raise DataError(f"{path} has no finished checkpoint yet; train longer or wait for the next save")
        checkpoint = finished[-1]
    if is_export(checkpoint / EXPORT_DIR):
        loaded = load_run(checkpoint / EXPORT_DIR)
        loaded.meta["checkpoint"] = str(checkpoint)
        return loaded
    return _load_native_payload(checkpoint)


def _load_native_payload(checkpoint: Path) -> LoadedRun:
    """A checkpoint without export/ (format 1, or train.export_weights=false): its native DCP
    payload, resharded into one plain model."""
    from core.config import load_config
    from pipeline.engines.native.state import load_state
    from pipeline.train.checkpoint import read_meta
    from pipeline.train.config import TrainConfig

    meta = read_meta(checkpoint)
    engine = meta.get("engine", "native")
    if engine != "native":
        raise DataError(f"{checkpoint} has no export/ folder and was written by the {engine} engine; "
                        "export it with that engine installed: nodd export RUN")
    # the run's config holds the LLM's shapes already; its weights come from the checkpoint, not the LLM
    cfg = load_config(TrainConfig, checkpoint.parents[1] / "train_config.toml", ['model.init_from=""'])
    if meta.get("format_version", 1) <= LAST_FUSED_FFN_FORMAT:  # may hold ffn.w13: read whole, then split
        model = model_from_weights(cfg.model, legacy_ffn(_whole_payload(checkpoint)))
    else:
        model = model_from_weights(cfg.model, {}, strict=False)
        load_state(checkpoint, model)
    return LoadedRun(model, run_meta(cfg) | {"checkpoint": str(checkpoint)})


def _whole_payload(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model weights of a DCP payload under the names it was saved with, gathered whole."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        try:
            dcp_to_torch_save(str(checkpoint), f"{tmp}/payload.pt")
            state = torch.load(f"{tmp}/payload.pt", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable payload is the same user problem
            raise DataError(f"checkpoint {checkpoint} cannot be loaded ({type(exc).__name__}: {exc}); use an "
                            "earlier checkpoint of the run") from None
    return state["model"]


def export(run: str | Path, out: str | Path) -> Path:
    """`nodd export`: the run's (or checkpoint's) weights as an export folder at `out`, with the
    tokenizers it decodes with copied in (pipeline/export.py bundle_tokenizers): the folder alone
    samples and captions on another machine."""
    loaded = load_run(run)
    weights = dict(loaded.model.named_parameters())  # a tied LM head is the embedding: stored once
    meta = {k: v for k, v in loaded.meta.items() if k != "checkpoint"} | {"export_version": EXPORT_VERSION}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = bundle_tokenizers(meta, out)  # before model.json, which write_export writes last
    return write_export(out, {k: v.detach() for k, v in weights.items()}, meta)


@torch.no_grad()
def sample_images(run: LoadedRun, prompt: str, n: int, steps: int, cfg_scale: float | None, seed: int,
                  temperature: float = 1.0) -> np.ndarray:
    """(n, H, W, 3) uint8 images (first frame of videos) for one prompt."""
    from model.sampling import generate_images

    ids = run.text.encode(prompt)
    out = generate_images(run.model, [ids] * n, run.text.bos_id, steps=steps, cfg_scale=cfg_scale, seed=seed,
                          temperature=temperature)
    return decode_tokens(run, out)


@torch.no_grad()
def sample_videos(run: LoadedRun, prompt: str, n: int, frames: int, steps: int, cfg_scale: float | None, seed: int,
                  temperature: float = 1.0) -> np.ndarray:
    """(n, T, H, W, 3) uint8 clips of `frames` frames for one prompt (the whole clip is one span,
    3-axis positions, as the model trained on video latents (T, C, h, w))."""
    from model.sampling import generate_images

    cfg = run.model.cfg
    side = cfg.latent_size // cfg.patch_size
    out = generate_images(run.model, [run.text.encode(prompt)] * n, run.text.bos_id, grid=(frames, side, side),
                          steps=steps, cfg_scale=cfg_scale, seed=seed, temperature=temperature)
    flat = out.reshape(n * frames, *out.shape[2:])  # every frame through the image tokenizer
    pixels = decode_tokens(run, flat)
    return pixels.reshape(n, frames, *pixels.shape[1:])


@torch.no_grad()
def decode_tokens(run: LoadedRun, tokens: torch.Tensor) -> np.ndarray:
    """(n, C, h, w) normalised latents or (n, h, w) codes -> (n, H, W, 3) uint8 pixels."""
    tok = run.image_tokenizer
    if run.model.cfg.mode == "discrete":
        pixels = tok.decode_codes(tokens.long())
    else:
        pixels = tok.decode(run.denormalise(tokens.float()))
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_images(run: LoadedRun, images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> what the model reads: normalised latent means or codes."""
    x = torch.from_numpy(images).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    encoded = run.image_tokenizer.encode(x)
    return encoded.codes if run.model.cfg.mode == "discrete" else run.normalise(encoded.mean)


@torch.no_grad()
def caption_images(run: LoadedRun, images: np.ndarray, max_tokens: int = 48) -> list[str]:
    """Captions for (B, H, W, 3) uint8 images at the tokenizer's resolution."""
    from model.sampling import caption

    ids = caption(run.model, encode_images(run, images), run.text.bos_id, run.text.eos_id, max_new_tokens=max_tokens)
    return [run.text.decode(row) for row in ids]


@torch.no_grad()
def caption_videos(run: LoadedRun, clips: np.ndarray, max_tokens: int = 48) -> list[str]:
    """Captions for (B, T, H, W, 3) uint8 clips: every frame through the image tokenizer (as prep
    encodes video: temporal_compression 1), the clip read as one (T, h, w) span."""
    from model.sampling import caption

    rows, frames = clips.shape[:2]
    encoded = encode_images(run, clips.reshape(rows * frames, *clips.shape[2:]))
    encoded = encoded.reshape(rows, frames, *encoded.shape[1:])
    ids = caption(run.model, encoded, run.text.bos_id, run.text.eos_id, max_new_tokens=max_tokens)
    return [run.text.decode(row) for row in ids]

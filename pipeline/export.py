"""The engine-neutral export: what sampling, captioning and evaluation read, whatever engine trained.

    FOLDER/model.safetensors                   weights in MultimodalModel parameter names, or, when
    FOLDER/model-00001-of-0000N.safetensors    several ranks wrote parts (pipeline stages), N files
    FOLDER/model.safetensors.index.json        and Hugging Face's index {"weight_map": {name: file}}
    FOLDER/model.json                          export_version, the model config, the text and image
                                               tokenizers and the latent statistics

The trainer writes one into every checkpoint (`step-N/export/`, train.export_weights) from
`Engine.export_state_dict()`; `nodd export RUN` copies the newest. A tied LM head is not stored
(it is the token embedding). Change EXPORT_VERSION when the layout changes meaning.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.config import from_dict
from core.errors import ConfigError, DataError
from core.files import atomic_path, write_text_atomic
from model.config import ModelConfig
from model.multimodal import MultimodalModel

# 2: SwiGLU's fused, row-interleaved ffn.w13 became ffn.w1 (gate) and ffn.w3 (up); version 1 still
# reads (split exactly on load: legacy_ffn). Version 3: `nodd export` copies the tokenizers in
# ("bundled": their paths in model.json are relative to the folder); 2 still loads.
EXPORT_VERSION = 3
WEIGHTS, INDEX, META = "model.safetensors", "model.safetensors.index.json", "model.json"


def run_meta(cfg) -> dict:
    """model.json's contents for a TrainConfig: the model, its tokenizers, latent statistics."""
    from data_prep import schema
    from pipeline.data.samples import LatentNorm

    manifests = [schema.Manifest.read(d) for d in cfg.data.shard_dirs]
    norm = LatentNorm.from_manifests(manifests) if cfg.data.normalise_latents else None
    # init_from cleared: an export is self-contained (its weights hold the LLM's); where it began is kept apart
    model = asdict(cfg.model) | {"init_from": ""}
    return {"export_version": EXPORT_VERSION, "model": model, "started_from_llm": cfg.model.init_from,
            "text_tokenizer": cfg.data.text_tokenizer,
            "image_tokenizer": cfg.data.tokenizer or manifests[0].tokenizer.get("path", ""),
            "latent_norm": norm.to_dict() if norm else None,
            "ema_decay": cfg.optim.ema_decay}  # > 0: these weights are that average, not the last step's


def write_export(folder: Path, weights: dict[str, torch.Tensor], meta: dict | None, rank: int = 0,
                 world: int = 1) -> Path:
    """Every rank calls it with the weights it is responsible for (most with none; rank 0 with
    `meta`). Files are written atomically; model.json last, so a folder with it is whole."""
    import torch.distributed as dist

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [sorted(weights)]
    if world > 1:
        names = [None] * world
        dist.all_gather_object(names, sorted(weights))
    writers = [r for r, n in enumerate(names) if n]
    seen = [name for n in names for name in n]
    assert len(seen) == len(set(seen)), "two ranks exported the same parameter"

    def file_of(r: int) -> str:
        return WEIGHTS if len(writers) == 1 else f"model-{writers.index(r) + 1:05d}-of-{len(writers):05d}.safetensors"

    if weights:
        with atomic_path(folder / file_of(rank)) as tmp:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata={"format": "pt"})
    if world > 1:
        dist.barrier()
    if rank == 0:
        if len(writers) > 1:
            index = {"metadata": {"export_version": EXPORT_VERSION},
                     "weight_map": {name: file_of(r) for r in writers for name in names[r]}}
            write_text_atomic(folder / INDEX, json.dumps(index, indent=2))
        write_text_atomic(folder / META, json.dumps(meta, indent=2))
    if world > 1:
        dist.barrier()
    return folder


BUNDLED_IMAGE_TOKENIZER, BUNDLED_TEXT_TOKENIZER = "image_tokenizer", "text_tokenizer.json"
# what a bundled image tokenizer keeps: nodd's own files, or a diffusers VAE's config and
# safetensors weights (never a pickled .bin: loading an export executes no code)
TOKENIZER_FILES = ("tokenizer.safetensors", "tokenizer_config.json", "fingerprint.txt", "config.json",
                   "diffusion_pytorch_model.safetensors")


def bundle_tokenizers(meta: dict, folder: Path) -> dict:
    """Copy the image tokenizer's folder and the text tokenizer's JSON into the export `folder`;
    `meta` with paths relative to it and "bundled": true."""
    import shutil

    meta = dict(meta)
    image = meta.get("image_tokenizer")
    if image:
        source, target = Path(image), folder / BUNDLED_IMAGE_TOKENIZER
        files = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
        if not files:
            raise DataError(f"the image tokenizer {source} this run decodes with is gone or holds no safetensors "
                            f"weights; put it back (or a copy at that path) and export again")
        target.mkdir(parents=True, exist_ok=True)
        for file in files:
            shutil.copy2(file, target / file.name)
        meta["image_tokenizer"] = BUNDLED_IMAGE_TOKENIZER
    text = meta.get("text_tokenizer", "byte")
    if text != "byte":
        from model.tokenizers.text import tokenizer_json_path

        shutil.copy2(tokenizer_json_path(text), folder / BUNDLED_TEXT_TOKENIZER)
        meta["text_tokenizer"] = BUNDLED_TEXT_TOKENIZER
    return meta | {"bundled": True}


def bundled_paths(meta: dict, folder: Path) -> dict:
    """An export's meta with its bundled tokenizers' paths made absolute."""
    if not meta.get("bundled"):
        return meta
    out = dict(meta)
    if out.get("image_tokenizer"):
        out["image_tokenizer"] = str(Path(folder) / out["image_tokenizer"])
    if out.get("text_tokenizer", "byte") != "byte":
        out["text_tokenizer"] = str(Path(folder) / out["text_tokenizer"])
    return out


def is_export(folder: Path) -> bool:
    return (Path(folder) / META).is_file()


def read_export(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, meta) of an export folder."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder / META} cannot be read ({exc}); export the run again with `nodd export RUN`") from None
    version = meta.get("export_version", 1)  # exports made before the version field are version 1
    if version > EXPORT_VERSION:
        raise DataError(f"{folder} is export version {version}, newer than this nodd reads ({EXPORT_VERSION}); "
                        "upgrade nodd")
    if (folder / INDEX).is_file():
        files = sorted(set(json.loads((folder / INDEX).read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = [WEIGHTS]
    weights = {}
    for name in files:
        try:
            weights.update(load_file(folder / name))
        except Exception as exc:  # noqa: BLE001 - missing or truncated file: same advice
            raise DataError(f"{folder / name} cannot be read ({exc}); export the run again with `nodd export RUN`") from None
    return legacy_ffn(weights) if version < 2 else weights, meta


def legacy_ffn(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of export version 1 in today's names: each ffn.w13 held [gate_0, up_0, gate_1,
    up_1, ...] row by row, so its even rows are w1 and its odd rows w3 (an exact split)."""
    out = {}
    for name, tensor in weights.items():
        if name.endswith("ffn.w13.weight"):
            out[name.replace("w13", "w1")], out[name.replace("w13", "w3")] = tensor[0::2].clone(), tensor[1::2].clone()
        else:
            out[name] = tensor
    return out


def model_config(meta: dict) -> ModelConfig:
    """model.json's model config, read as strictly as a config file: a key this nodd does not
    know is an error, not silently dropped (it would build another model than the one trained)."""
    try:
        return from_dict(ModelConfig, meta["model"], "model")
    except ConfigError as exc:
        raise DataError(f"model.json's model config does not fit this nodd ({exc}); upgrade nodd, or export "
                        "the run again with this version") from None


def model_from_weights(cfg: ModelConfig, weights: dict[str, torch.Tensor], device: torch.device | str = "cpu",
                       strict: bool = True) -> MultimodalModel:
    """A plain MultimodalModel holding `weights` (built on the meta device: no random draws).
    strict=False: leave what `weights` lacks uninitialised (a caller loads it next)."""
    with torch.device("meta"):
        model = MultimodalModel(cfg)
    model.to_empty(device=device)
    model.tie_weights()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if strict and (missing or unexpected):
        raise DataError(f"the exported weights do not fit the model config (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); export the run again with `nodd export RUN`")
    return model


def weights_to_start_from(path: str | Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """train.init_from: the weights of an export folder, a checkpoint or a run directory (its
    newest checkpoint), checked against the model `cfg` a new run builds; any engine wrote them."""
    weights, _ = read_export(_export_folder(Path(path)))
    try:
        model_from_weights(cfg, weights)  # the same names and shapes, or a DataError naming them
    except (RuntimeError, DataError) as exc:
        raise DataError(f"train.init_from={path}: its weights do not fit this run's model config ({exc})") from None
    return weights


def _export_folder(path: Path) -> Path:
    """An export folder itself, a checkpoint's export/, or a run directory's newest one."""
    if is_export(path):
        return path
    if is_export(path / "export"):
        return path / "export"
    finished = sorted(p for p in (path / "checkpoints").glob("step-*")
                      if not p.name.endswith(".tmp") and is_export(p / "export"))  # .tmp: a save in progress
    if finished:
        return finished[-1] / "export"
    raise DataError(f"train.init_from={path}: no export there (an export folder, a checkpoint with export/ or a run "
                    "directory); write one with `nodd export RUN`")

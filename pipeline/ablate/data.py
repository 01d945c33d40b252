"""The ablation's data stage: every image tokenizer trained on the same images (the tokenizer
configs share one source), the same shapes images encoded by each into verified shards, and one
caption BPE. Finished pieces are reused, so a rerun after an interruption loses nothing.

Runs where `nodd ablate` runs (at toy scale, minutes); the arms are the jobs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from core.config import load_config, toml_value
from core.errors import DataError
from pipeline.ablate.spec import AblateSpec

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@dataclass
class PreparedData:
    tokenizer: Path  # the image tokenizer's folder
    shards: Path
    metrics: dict  # the tokenizer's metrics.json: psnr, codebook_utilisation, info_budget


def bits_per_image(metrics: dict) -> float | None:
    """A tokenizer's information budget per image (its metrics.json): L x log2 V for codes."""
    return (metrics.get("info_budget") or {}).get("bits_per_image")


def text_tokenizer(spec: AblateSpec) -> Path:
    from pipeline.demo import caption_tokenizer

    return caption_tokenizer(spec.root / "data" / "tokenizer_bpe")


def prepared(spec: AblateSpec) -> dict[str, PreparedData] | None:
    """What the data stage made, or None while any piece is missing."""
    out = {}
    for tok in spec.tokenizers:
        folder, shards = _folders(spec, tok.name)
        if not (folder / "metrics.json").is_file() or not (shards / "manifest.json").is_file():
            return None
        out[tok.name] = PreparedData(folder, shards, json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
    return out


def prepare_data(spec: AblateSpec) -> dict[str, PreparedData]:
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep
    from data_prep.shards import verify_shards
    from pipeline.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    text = text_tokenizer(spec)
    out = {}
    for tok in spec.tokenizers:
        folder, shards = _folders(spec, tok.name)
        if (folder / "fingerprint.txt").is_file() and (folder / "metrics.json").is_file():
            log.info("ablate: reusing tokenizer %s (%s)", tok.name, folder)
        else:
            cfg = load_config(TokenizerTrainConfig, tok.config, [f"steps={spec.tokenizer_steps}", *tok.overrides,
                                                                 f"out_dir={toml_value(str(folder))}"])
            log.info("ablate: training tokenizer %s (%s, %d steps)", tok.name, cfg.kind, cfg.steps)
            train_tokenizer(cfg)
        prep = load_config(PrepConfig, CONFIGS / "prep" / "shapes.toml", [
            *spec.prep_overrides, f"out_dir={toml_value(str(shards))}", f"tokenizer.path={toml_value(str(folder))}",
            f"tokenizer.text={toml_value(str(text))}", f"source.limit={spec.samples}"])
        run_prep(prep)  # skips the shards that exist
        problems = verify_shards(shards, str(folder))
        if problems:
            raise DataError(f"the {tok.name} shards failed verification: {problems[0]}; delete {shards} and rerun")
        out[tok.name] = PreparedData(folder, shards, json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
    return out


def _folders(spec: AblateSpec, name: str) -> tuple[Path, Path]:
    data = spec.root / "data"
    return data / "tokenizers" / name, data / "shards" / name

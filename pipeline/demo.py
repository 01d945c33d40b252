"""`make demo` / `nodd demo`: the main job on the built-in data, end to end on a CPU.

    nodd demo --out runs/demo          (what `make demo` runs, in a loopback-only namespace)

1. trains a KL-VAE tokenizer on built-in shapes (configs/tokenizer/shapes_kl.toml),
2. pre-encodes shapes images and moving-shapes mp4 clips with Ray into Parquet shards,
3. verifies the shards and decodes samples back to PNG (and mp4) to look at.
Later stages (training, sampling, evaluation) join here as they land.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from data_prep.config import PrepConfig
from data_prep.prep import run_prep
from data_prep.shards import inspect_shards, verify_shards
from pipeline.config import load_config
from pipeline.errors import DataError
from pipeline.tokenizer_train import TokenizerTrainConfig, train_tokenizer

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_demo(out: str | Path, samples: int = 2000, tokenizer_steps: int = 600) -> dict:
    out = Path(out)
    tok_dir = out / "tokenizer_kl"
    if (tok_dir / "fingerprint.txt").exists() and (tok_dir / "metrics.json").exists():
        log.info("demo: reusing the tokenizer in %s (delete it to retrain)", tok_dir)
        metrics = json.loads((tok_dir / "metrics.json").read_text(encoding="utf-8"))
    else:
        tok_cfg = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "shapes_kl.toml",
                              [f"out_dir={_toml_str(tok_dir)}", f"steps={tokenizer_steps}"])
        metrics = train_tokenizer(tok_cfg)
    results = {}
    for name, config, limit in (("shapes", "shapes.toml", samples), ("moving_shapes", "moving_shapes.toml", max(64, samples // 16))):
        prep_cfg = load_config(PrepConfig, CONFIGS / "prep" / config, [
            f"out_dir={_toml_str(out / 'shards' / name)}", f"tokenizer.path={_toml_str(tok_dir)}", f"source.limit={limit}",
        ])
        manifest = run_prep(prep_cfg)
        problems = verify_shards(prep_cfg.out_dir, str(tok_dir))
        if problems:
            raise DataError(f"demo shards failed verification: {problems[0]}")
        written = inspect_shards(prep_cfg.out_dir, count=32)
        results[name] = {"shards": prep_cfg.out_dir, "samples": manifest["num_samples"], **written}
    print("\nnodd demo finished:")
    print(f"  tokenizer        {tok_dir}: PSNR {metrics['psnr']:.2f} dB on held-out images, "
          f"{metrics['info_budget']['values']} latent values per image (reconstructions.png)")
    for name, info in results.items():
        print(f"  {name:16s} {info['samples']} samples, verified shards in {info['shards']}")
        for kind in ("png", "mp4"):
            if kind in info:
                print(f"  {'':16s} decoded samples: {info[kind]}")
    return {"tokenizer": metrics, **results}


def _toml_str(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'

"""`make demo` / `nodd demo`: the main job on the built-in data, end to end on a CPU.

    nodd demo --out runs/demo          (what `make demo` runs, in a loopback-only namespace)

1. trains a KL-VAE tokenizer on built-in shapes (configs/tokenizer/shapes_kl.toml) and a BPE on
   their captions (configs/tokenizer/captions_bpe.toml: a caption is 3-7 tokens, not 20-35 bytes),
2. pre-encodes shapes images and moving-shapes mp4 clips with Ray into Parquet shards,
3. verifies the shards and decodes samples back to PNG (and mp4) to look at,
4. trains the transfusion model on 2 processes (data-parallel replicas; configs/train/shapes.toml),
   in bf16 where this machine's bf16 matmuls are clearly faster (fp32 master weights),
5. samples images and evaluates generation, captioning and text (report.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.config import load_config, toml_value
from core.errors import DataError
from data_prep.config import PrepConfig
from data_prep.prep import run_prep
from data_prep.shards import inspect_shards, verify_shards
from pipeline.tokenizer_train import TokenizerTrainConfig, train_tokenizer

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run_demo(out: str | Path, samples: int = 30000, tokenizer_steps: int = 350, train_steps: int = 2000,
             nproc: int = 2, eval_images: int = 256, eval_per_prompt: int = 4, eval_steps: int = 20,
             clips: int = 125, seed: int = 0) -> dict:
    """`seed`: the model's training seed (train.seed and data.seed); the tokenizers, shards and
    held-out evaluation stay the same, so runs with different seeds measure the recipe's spread."""
    out = Path(out)
    tok_dir = out / "tokenizer_kl"
    if (tok_dir / "fingerprint.txt").exists() and (tok_dir / "metrics.json").exists():
        log.info("demo: reusing the tokenizer in %s (delete it to retrain)", tok_dir)
        metrics = json.loads((tok_dir / "metrics.json").read_text(encoding="utf-8"))
    else:
        tok_cfg = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "shapes_kl.toml",
                              [f"out_dir={_toml_str(tok_dir)}", f"steps={tokenizer_steps}"])
        metrics = train_tokenizer(tok_cfg)
    text_tokenizer = caption_tokenizer(out / "tokenizer_bpe")
    results = {}
    for name, config, limit in (("shapes", "shapes.toml", samples), ("moving_shapes", "moving_shapes.toml", clips)):
        prep_cfg = load_config(PrepConfig, CONFIGS / "prep" / config, [
            f"out_dir={_toml_str(out / 'shards' / name)}", f"tokenizer.path={_toml_str(tok_dir)}",
            f"tokenizer.text={_toml_str(text_tokenizer)}", f"source.limit={limit}",
        ])
        manifest = run_prep(prep_cfg)
        problems = verify_shards(prep_cfg.out_dir, str(tok_dir))
        if problems:
            raise DataError(f"demo shards failed verification: {problems[0]}")
        written = inspect_shards(prep_cfg.out_dir, count=32)
        results[name] = {"shards": prep_cfg.out_dir, "samples": manifest["num_samples"], **written}
    run_dir = out / ("train" if seed == 0 else f"train-seed{seed}")
    if train_steps > 0:
        results["train"] = _train_and_evaluate(run_dir, results["shapes"]["shards"], text_tokenizer, train_steps, nproc,
                                               dict(per_prompt=eval_per_prompt, extra=24, images=eval_images,
                                                    steps=eval_steps, cfg_scale=3.0), seed)
    print("\nnodd demo finished:")
    print(f"  tokenizer        {tok_dir}: PSNR {metrics['psnr']:.2f} dB on held-out images, "
          f"{metrics['info_budget']['values']} latent values per image (reconstructions.png)")
    for name in ("shapes", "moving_shapes"):
        info = results[name]
        print(f"  {name:16s} {info['samples']} samples, verified shards in {info['shards']}")
        for kind in ("png", "mp4"):
            if kind in info:
                print(f"  {'':16s} decoded samples: {info[kind]}")
    if "train" in results:
        ev = results["train"]
        und = ev["understanding"]
        by_kind = ", ".join(f"{kind} {und[f'{kind}_accuracy']:.2f}" for kind in ("single", "count", "relation")
                            if und.get(f"{kind}_accuracy") is not None)
        print(f"  model            {run_dir}: {train_steps} steps on {nproc} processes in {ev['precision']}; generation accuracy "
              f"{ev['generation']['single_object_accuracy']:.2f} on single-object prompts "
              f"({ev['generation']['overall_accuracy']:.2f} overall), caption accuracy "
              f"{und['caption_accuracy']:.2f} ({by_kind}; {und['images']} images), "
              f"text perplexity {ev['text']['perplexity']:.2f}")
        print(f"  {'':16s} report: {run_dir / 'report.md'}")
    return {"tokenizer": metrics, **results}


def caption_tokenizer(folder: Path) -> Path:
    """The BPE the demo's captions are tokenised with (trained in seconds; reused when present)."""
    path = folder / "tokenizer.json"
    if not path.exists():
        cfg = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "captions_bpe.toml",
                          [f"out_dir={_toml_str(folder)}"])
        train_tokenizer(cfg)
    return path


def _train_and_evaluate(run_dir: Path, shards: str, text_tokenizer: Path, steps: int, nproc: int,
                        eval_settings: dict, seed: int = 0) -> dict:
    """`nodd train --nproc N` as a child (torchrun needs its own processes), then `nodd eval`."""
    import shutil
    import subprocess
    import sys

    import torch

    from model.tokenizers import load_text_tokenizer
    from pipeline.evaluate import evaluate
    from pipeline.train.metrics import bf16_pays

    shutil.rmtree(run_dir, ignore_errors=True)  # the demo trains from scratch every time
    command = [sys.executable, "-m", "pipeline.cli", "train", "--config", str(CONFIGS / "train" / "shapes.toml"),
               f"run_dir={_toml_str(run_dir)}", f"data.shards={_toml_str(Path(shards))}", f"train.steps={steps}",
               f"train.checkpoint_every={steps}", f"data.text_tokenizer={_toml_str(text_tokenizer)}",
               f"model.text_vocab_size={load_text_tokenizer(str(text_tokenizer)).vocab_size}",
               f"train.seed={seed}", f"data.seed={seed}"]
    if nproc > 1:
        command[4:4] = ["--nproc", str(nproc)]
        # Whole replicas, not FSDP shards: for a model this small the per-block all-gathers cost
        # more than they save (1.15-1.4x the tokens/s of dp_shard=2 on 2 cores; bench/train.py).
        command += [f"parallel.dp_replicate={nproc}", "parallel.dp_shard=1"]
    # bf16 where it pays: the demo's steps 1.5x faster on 2 cores with avx512_bf16 and no
    # less accurate (README, "What the demo model learns"); fp32 where bf16 would be emulated.
    precision = "bf16" if bf16_pays(torch.device("cuda" if torch.cuda.is_available() else "cpu")) else "fp32"
    command.append(f"train.precision={precision}")
    log.info("demo: training (%s)", " ".join(command[2:]))
    if subprocess.call(command) != 0:
        raise DataError(f"demo training failed; see the messages above (run dir {run_dir})")
    return {**evaluate(run_dir, **eval_settings), "precision": precision}


def _toml_str(path: Path) -> str:
    return toml_value(str(path))

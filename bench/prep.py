"""Benchmark: the Ray prep pipeline against a plain single-process torch loop, side by side.

    make bench                                   (inside a loopback-only namespace)
    python bench/prep.py --sizes 2000 20000      (the same, by hand)

Both encode the same images (built-in shapes, pre-rendered once into a .npy file) with the same
encoder (the project's default KL tokenizer, randomly initialised: the cost does not depend on
the weights). The plain loop is the limit on this machine: read the array, encode in batches,
keep the latents. The Ray pipeline is the real `nodd prep` (npy source -> decode tasks ->
encoder actors -> Parquet shards + manifest). Printed: images/s of both, their ratio, and Ray's
fixed start-up cost (ray.init, measured separately, and the pipeline's first-batch latency).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def render(n: int, path: Path, size: int) -> Path:
    from data_prep.builtin.shapes import shapes_sample

    if not path.exists() or np.load(path, mmap_mode="r").shape[0] < n:
        images = np.stack([shapes_sample(0, i, size)[0] for i in range(n)])
        np.save(path, images)
    return path


def make_tokenizer(path: Path, size: int) -> Path:
    import torch

    from model.tokenizers import ImageTokenizer, TokenizerConfig, save_tokenizer

    torch.manual_seed(0)
    save_tokenizer(ImageTokenizer(TokenizerConfig(kind="kl", image_size=size)), path)
    return path


def plain_loop(npy: Path, n: int, tokenizer_dir: Path, batch: int) -> float:
    """images/s of the single-process loop, all cores to torch."""
    import torch

    from model.tokenizers import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer = load_tokenizer(tokenizer_dir).eval()
    images = np.load(npy, mmap_mode="r")
    started = time.perf_counter()
    means = []
    with torch.inference_mode():
        for start in range(0, n, batch):
            x = torch.from_numpy(np.array(images[start:min(start + batch, n)])).float().div_(127.5).sub_(1.0)
            out = tokenizer.encode(x.permute(0, 3, 1, 2).contiguous())
            means.append(out.mean.numpy())
    seconds = time.perf_counter() - started
    assert sum(len(m) for m in means) == n
    return n / seconds


def ray_pipeline(npy: Path, n: int, tokenizer_dir: Path, out_dir: Path, batch: int, shard_size: int) -> float:
    """images/s of `nodd prep` on an already running Ray (start-up measured separately)."""
    from core.config import load_config
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep

    shutil.rmtree(out_dir, ignore_errors=True)
    cfg = load_config(PrepConfig, None, [
        "source.kind=npy", f"source.path={npy}", f"source.limit={n}", "source.require_caption=false",
        f"tokenizer.path={tokenizer_dir}", f"out_dir={out_dir}", f"encode_batch_size={batch}",
        f"shard_size={shard_size}", "max_error_rate=0",
    ])
    started = time.perf_counter()
    manifest = run_prep(cfg)
    seconds = time.perf_counter() - started
    assert manifest["num_samples"] == n, manifest["num_samples"]
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2, help="Ray runs per size, each followed by a plain run")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from pipeline.logs import setup_logging

    setup_logging()
    import logging

    logging.getLogger("data_prep").setLevel(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    npy = render(max(args.sizes), out / f"shapes{args.image_size}.npy", args.image_size)
    tokenizer_dir = make_tokenizer(out / "tokenizer", args.image_size)

    import ray

    from data_prep.config import RayConfig
    from data_prep.ray_runtime import init_ray

    started = time.perf_counter()
    init_ray(RayConfig())
    init_seconds = time.perf_counter() - started
    # Fixed cost of one pipeline (planning, actor start-up with a torch import each, fill and
    # drain), measured on a tiny input after a warm-up run that pays one-off imports.
    tiny = 100
    ray_pipeline(npy, tiny, tokenizer_dir, out / "ray_warmup", args.batch, args.shard_size)
    started = time.perf_counter()
    ray_pipeline(npy, tiny, tokenizer_dir, out / "ray_warmup", args.batch, args.shard_size)
    fixed = time.perf_counter() - started

    print(f"\nprep benchmark: {os.cpu_count()} cores, {args.image_size}x{args.image_size} images, default KL encoder, "
          f"batch {args.batch}, {args.shard_size} images per shard")
    print(f"Ray start-up: ray.init {init_seconds:.2f} s (once per cluster); fixed cost per pipeline {fixed:.2f} s "
          f"(a {tiny}-image run)")
    print(f"each size: {args.rounds} Ray runs interleaved with {args.rounds + 1} plain runs (plain, ray, plain, ...); "
          "medians shown, because this machine's speed drifts by up to 2x within minutes")
    print(f"{'images':>8} {'plain img/s':>12} {'ray img/s':>10} {'ratio':>7} {'ray img/s w/o fixed':>20} {'ratio':>7}  runs (plain | ray)")
    for n in args.sizes:
        plains = [plain_loop(npy, n, tokenizer_dir, args.batch)]
        rays = []
        for _ in range(args.rounds):
            rays.append(ray_pipeline(npy, n, tokenizer_dir, out / f"ray_{n}", args.batch, args.shard_size))
            plains.append(plain_loop(npy, n, tokenizer_dir, args.batch))
        plain, piped = statistics.median(plains), statistics.median(rays)
        steady = n / max(n / piped - fixed, 1e-9)
        runs = " ".join(f"{p:,.0f}" for p in plains) + " | " + " ".join(f"{r:,.0f}" for r in rays)
        print(f"{n:>8} {plain:>12,.0f} {piped:>10,.0f} {piped / plain:>6.2f}x {steady:>20,.0f} {steady / plain:>6.2f}x  {runs}",
              flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()

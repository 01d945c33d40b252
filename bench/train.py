"""Benchmark: training throughput on 1 vs 2 processes (DP and TP), the loader against it, the
step with and without the next batches packed in a background thread (data.prefetch), and the
megatron and DeepSpeed engines against the native engine at the same layouts.

    make demo                                  (once: it leaves runs/demo/shards/shapes)
    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/train.py'
    ... bench/train.py --engine megatron       (one engine's rows and their native counterparts)

Each layout runs the real `nodd train` (configs/train/shapes.toml, the demo's model) for
`--steps` steps, `--rounds` times, alternating layouts so the machine's drift hits all alike;
tokens/s is the median of the logged intervals after the first. The loader is timed alone on the
same shards and settings: packed tokens/s it can produce, against what the fastest layout
consumes (target: at least 10x, so the loader is never the bottleneck). The layouts marked
"background packing" run with data.prefetch=2: the next 2 steps' batches are packed in a thread
while a step computes; the others pack inside the step (data.prefetch's CPU default). The
"megatron" and "deepspeed" rows run train.engine=megatron / deepspeed (target on CPU: >= 0.8x the
native engine's tokens/s at the same layout: the same math on the same cores). ZeRO-1 and ZeRO-2
are compared with whole replicas (each rank computes the whole model, as they do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREFETCH = ["data.prefetch=2"]
LAYOUTS = {
    "1 process": (1, []),
    "1 process, background packing": (1, PREFETCH),
    "2 processes, FSDP (dp_shard=2)": (2, ["parallel.dp_shard=2"]),
    "2 processes, replicas (dp_replicate=2)": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1"]),
    "2 processes, replicas, background packing": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1",
                                                      *PREFETCH]),
    "2 processes, replicas, bf16": (2, ["parallel.dp_replicate=2", "parallel.dp_shard=1", "train.precision=bf16"]),
    "2 processes, TP (tp=2)": (2, ["parallel.tp=2", "parallel.dp_shard=1"]),
    # the same tokens per step as two micro-batches of half the rows through 2 stages (1F1B)
    "2 processes, PP (pp=2, 1F1B)": (2, ["parallel.pp=2", "parallel.dp_shard=1", "optim.grad_accum=2",
                                         "data.batch_rows=4"]),
}


MEGATRON = ["train.engine=megatron"]
# engine row -> the native row of the same layout
COUNTERPARTS = {
    "megatron, 1 process": "1 process",
    "megatron, 2 processes, DP (distributed optimizer)": "2 processes, replicas (dp_replicate=2)",
    "megatron, 2 processes, TP (tp=2)": "2 processes, TP (tp=2)",
    "megatron, 2 processes, PP (pp=2, 1F1B)": "2 processes, PP (pp=2, 1F1B)",
    "deepspeed, 2 processes, ZeRO-1": "2 processes, replicas (dp_replicate=2)",
    "deepspeed, 2 processes, ZeRO-2": "2 processes, replicas (dp_replicate=2)",
    "deepspeed, 2 processes, ZeRO-3": "2 processes, FSDP (dp_shard=2)",
    "deepspeed, 2 processes, ZeRO-2 + optimizer offload": "2 processes, replicas (dp_replicate=2)",
    "deepspeed, 2 processes, PP (pp=2, ZeRO-1)": "2 processes, PP (pp=2, 1F1B)",
}
DEEPSPEED = ["train.engine=deepspeed"]
LAYOUTS.update({
    **{f"deepspeed, 2 processes, ZeRO-{stage}": (2, ["parallel.dp_shard=2", *DEEPSPEED, f"deepspeed.zero_stage={stage}"])
       for stage in (1, 2)},
    # every parameter partitioned (the default threshold keeps the demo model's small ones whole)
    "deepspeed, 2 processes, ZeRO-3": (2, ["parallel.dp_shard=2", *DEEPSPEED, "deepspeed.zero_stage=3",
                                           "deepspeed.param_persistence_threshold=0"]),
    "deepspeed, 2 processes, ZeRO-2 + optimizer offload": (2, ["parallel.dp_shard=2", *DEEPSPEED, "deepspeed.zero_stage=2",
                                                              "deepspeed.offload_optimizer=true"]),
    "deepspeed, 2 processes, PP (pp=2, ZeRO-1)": (2, [*LAYOUTS["2 processes, PP (pp=2, 1F1B)"][1], *DEEPSPEED,
                                                     "deepspeed.zero_stage=1"]),
    "megatron, 1 process": (1, MEGATRON),
    "megatron, 2 processes, DP (distributed optimizer)": (2, ["parallel.dp_shard=2", *MEGATRON]),
    "megatron, 2 processes, TP (tp=2)": (2, [*LAYOUTS["2 processes, TP (tp=2)"][1], *MEGATRON]),
    "megatron, 2 processes, PP (pp=2, 1F1B)": (2, [*LAYOUTS["2 processes, PP (pp=2, 1F1B)"][1], *MEGATRON]),
})


def run_layout(nproc: int, extra: list[str], shards: str, steps: int, workdir: Path) -> tuple[float, dict]:
    """Median tokens/s after the first logged interval, and the last record's memory figures
    (each rank's peak GiB, and the parameter / optimizer MiB it holds)."""
    run_dir = workdir / f"run-{nproc}-{len(extra)}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--config", str(ROOT / "configs/train/shapes.toml"),
           f"run_dir={run_dir}", f"data.shards={shards}", f"train.steps={steps}", "train.log_every=5",
           f"train.checkpoint_every={steps}", *extra]
    if nproc > 1:
        cmd[4:4] = ["--nproc", str(nproc)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir, ignore_errors=True)
    return statistics.median(r["tokens_per_s"] for r in records[1:]), records[-1]


def loader_tokens_per_s(shards: str, batches: int) -> tuple[float, float]:
    from core.config import load_config
    from model.config import ModelConfig
    from pipeline.train.config import TrainConfig

    cfg = load_config(TrainConfig, ROOT / "configs/train/shapes.toml", [f"data.shards={shards}"])
    from pipeline.data.loader import PackedLoader

    loader = PackedLoader(cfg.data, ModelConfig(**cfg.model.__dict__))
    loader.next_batch()  # opens the first shard
    started = time.perf_counter()
    tokens = sum(loader.next_batch().num_tokens for _ in range(batches))
    return tokens / (time.perf_counter() - started), loader.efficiency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=str(ROOT / "runs/demo/shards/shapes"))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--engine", choices=["megatron", "deepspeed"],
                        help="only this engine's rows and the native rows they are compared with")
    args = parser.parse_args()
    layouts = LAYOUTS
    if args.engine:
        rows = {k: v for k, v in COUNTERPARTS.items() if k.startswith(args.engine)}
        layouts = {k: v for k, v in LAYOUTS.items() if k in rows or k in rows.values() or k == "1 process"}
    if not (Path(args.shards) / "manifest.json").is_file():
        raise SystemExit(f"no shards at {args.shards}: run `make demo` first (or pass --shards)")
    loader_tps, efficiency = loader_tokens_per_s(args.shards, 200)
    results: dict[str, list[float]] = {name: [] for name in layouts}
    memory: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name, (nproc, extra) in layouts.items():
                tokens_per_s, memory[name] = run_layout(nproc, extra, args.shards, args.steps, Path(tmp))
                results[name].append(tokens_per_s)
    print(f"\ntrain benchmark: {os.cpu_count()} cores, configs/train/shapes.toml, {args.steps} steps x {args.rounds} rounds")
    base = statistics.median(results["1 process"])
    print(f"{'layout':50} {'tokens/s':>10} {'vs 1 process':>13}  {'peak GiB per rank':>18}  "
          f"{'params / optimizer MiB per rank':>32}  runs")
    for name, values in results.items():
        median = statistics.median(values)
        # CPU: the process's peak RSS, runtime included; held state: what sharding divides
        peaks = "/".join(f"{m:.2f}" for m in memory[name]["memory_gib_per_rank"])
        held = " ".join(f"{r['parameters']:.1f}/{r['optimizer']:.1f}" for r in memory[name]["state_mib_per_rank"])
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{name:50} {median:>10,.0f} {median / base:>12.2f}x  {peaks:>18}  {held:>32}  {runs}")
    for row, native in COUNTERPARTS.items():
        if row in results:
            ratio = statistics.median(results[row]) / statistics.median(results[native])
            print(f"{row}: {ratio:.2f}x the native engine's {native} (target >= 0.8x)")
    for without, with_thread in (("1 process", "1 process, background packing"),
                                 ("2 processes, replicas (dp_replicate=2)", "2 processes, replicas, background packing")):
        if with_thread not in results:
            continue
        inside, ahead = (statistics.median(results[k]) for k in (without, with_thread))
        # the same tokens per step either way, so the step-time ratio is the tokens/s ratio
        print(f"{without}: step time with background packing / packing in the step: {inside / ahead:.2f}x "
              f"({ahead:,.0f} against {inside:,.0f} tokens/s)")
    fastest = max(statistics.median(v) for v in results.values())
    print(f"\nloader alone: {loader_tps:,.0f} packed tokens/s (packing efficiency {efficiency:.1%}); "
          f"{loader_tps / fastest:.1f}x what the fastest layout consumes (target >= 10x)")


if __name__ == "__main__":
    main()

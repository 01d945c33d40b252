"""The `nodd` command. Thin: parse, build the config, call the package that does the work.
Heavy imports (torch, ray) happen inside the handlers, so `nodd --help` stays fast.

    nodd tokenizer train --config configs/tokenizer/shapes_kl.toml [key=value ...]
    nodd prep --config configs/prep/shapes.toml [key=value ...]
    nodd shards verify DIR [--tokenizer PATH]
    nodd shards inspect DIR [--count N] [--tokenizer PATH]
    nodd train --config configs/train/shapes.toml [--nproc N] [--resume] [key=value ...]
    nodd export RUN [--out DIR]
    nodd sample --run RUN --prompt "a red circle" [--n 8] [--steps 20] [--cfg 3.0] [--seed 0] [--out DIR]
    nodd caption --run RUN IMAGE [IMAGE ...]
    nodd eval --run RUN [--per-prompt 4] [--images 256] [--steps 20] [--cfg 3.0]
    nodd demo [--out runs/demo]
    nodd submit --target local|slurm|ray|k8s --job configs/cluster/<name>.toml [--dry-run]   (cli_cluster.py)
    nodd jobs list | status ID [--wait] | logs ID | cancel ID
    nodd sweep [report] --config configs/sweep/<name>.toml

Exit status: 0 on success, 1 with a one-line reason on a nodd error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.errors import NoddError

OVERRIDES_HELP = "config overrides like source.limit=500 image.size=64 (after the file's values)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodd", description="Pretraining pipeline for multimodal LLMs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    tok = commands.add_parser("tokenizer", help="train image/video/text tokenizers")
    tok_commands = tok.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = tok_commands.add_parser("train", help="train a KL-VAE, VQ, FSQ or BPE tokenizer on any source")
    train.add_argument("--config", help="TOML file (see configs/tokenizer/)")
    train.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    prep = commands.add_parser("prep", help="pre-encode a source into verified shards with Ray")
    prep.add_argument("--config", help="TOML file (see configs/prep/)")
    prep.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)

    shards = commands.add_parser("shards", help="verify or inspect prepared shards")
    shard_commands = shards.add_subparsers(dest="shards_command", required=True, metavar="ACTION")
    verify = shard_commands.add_parser("verify", help="check counts, checksums and fingerprints")
    verify.add_argument("dir")
    verify.add_argument("--tokenizer", help="tokenizer dir that must match the shards' fingerprint")
    inspect = shard_commands.add_parser("inspect", help="print a summary and decode samples to PNG/mp4")
    inspect.add_argument("dir")
    inspect.add_argument("--count", type=int, default=16, help="images to decode (default 16)")
    inspect.add_argument("--tokenizer", help="decode with this tokenizer instead of the manifest's")

    train = commands.add_parser("train", help="train the multimodal model (any train.engine; one or many processes)")
    train.add_argument("--config", help="TOML file (see configs/train/)")
    train.add_argument("--nproc", type=int, default=0,
                       help="start N local processes with torchrun (default: use the environment torchrun/srun set)")
    train.add_argument("--resume", action="store_true", help="continue from the run_dir's latest checkpoint")
    train.add_argument("overrides", nargs="*", help="config overrides like train.steps=100 parallel.tp=2")

    export = commands.add_parser("export", help="consolidated safetensors weights + config of a run's newest checkpoint")
    export.add_argument("run", help="run directory")
    export.add_argument("--out", help="folder to write (default RUN/export)")

    sample = commands.add_parser("sample", help="generate images from a text prompt with a trained run")
    sample.add_argument("--run", required=True, help="run directory or export folder")
    sample.add_argument("--prompt", required=True)
    sample.add_argument("--n", type=int, default=8, help="images (default 8)")
    sample.add_argument("--steps", type=int, default=20, help="ODE steps (transfusion, mar head)")
    sample.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale (default off)")
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", help="folder for the PNG or mp4 (default RUN/samples)")
    sample.add_argument("--video", action="store_true", help="generate clips (a run trained on video): one mp4 each")
    sample.add_argument("--frames", type=int, default=8, help="frames per clip with --video (default 8)")

    cap = commands.add_parser("caption", help="describe images with a trained run")
    cap.add_argument("--run", required=True, help="run directory or export folder")
    cap.add_argument("images", nargs="+", help="image files")

    ev = commands.add_parser("eval", help="generation, understanding and text benchmarks on built-in shapes")
    ev.add_argument("--run", required=True, help="run directory (eval.json and report.md are written there)")
    ev.add_argument("--per-prompt", type=int, default=4, help="images generated per prompt (default 4)")
    ev.add_argument("--extra-prompts", type=int, default=24, help="count/relation prompts besides the 24 single objects")
    ev.add_argument("--images", type=int, default=256, help="held-out images to caption (default 256)")
    ev.add_argument("--steps", type=int, default=20, help="ODE steps (default 20)")
    ev.add_argument("--cfg", type=float, default=3.0, help="guidance scale (default 3; 0 = off)")
    ev.add_argument("--videos", type=int, default=0, help="also generate and score this many moving-shapes clips")
    ev.add_argument("--frames", type=int, default=8, help="frames per clip (default 8, as prep cuts them)")

    demo = commands.add_parser("demo", help="the main job on built-in data: tokenizer, prep, verify, inspect")
    demo.add_argument("--out", default="runs/demo", help="folder for everything the demo writes")
    demo.add_argument("--samples", type=int, default=30000, help="shapes images to prepare")
    demo.add_argument("--train-steps", type=int, default=2000, help="model training steps (0 = stop after prep)")
    demo.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="the model's training seed (default 0; runs/demo/train-seedN)")

    from pipeline import cli_cluster

    cli_cluster.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # re-run as is by `train --nproc`
    from pipeline.logs import setup_logging

    setup_logging(args.verbose)
    try:
        return HANDLERS[args.command](args)
    except NoddError as exc:
        print(f"nodd: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nodd: interrupted; finished work is kept, rerun the same command to resume", file=sys.stderr)
        return 130


def _tokenizer(args) -> int:
    from core.config import load_config
    from pipeline.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    result = train_tokenizer(cfg)
    print(json.dumps(result, indent=2))
    return 0


def _prep(args) -> int:
    from core.config import load_config
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep

    cfg = load_config(PrepConfig, args.config, args.overrides)
    manifest = run_prep(cfg)
    print(f"{manifest['num_samples']} samples in {len(manifest['shards'])} shards, "
          f"{manifest['errors']['count']} skipped -> {cfg.out_dir}")
    return 0


def _shards(args) -> int:
    from data_prep.shards import format_summary, inspect_shards, summarize, verify_shards

    if args.shards_command == "verify":
        problems = verify_shards(args.dir, args.tokenizer)
        for problem in problems:
            print(f"FAIL {problem}")
        if problems:
            print(f"nodd: error: {len(problems)} problems in {args.dir}", file=sys.stderr)
            return 1
        summary = summarize(args.dir)
        print(f"OK {args.dir}: {summary['samples']} samples in {summary['shards']} shards verified")
        return 0
    print(format_summary(summarize(args.dir)))
    written = inspect_shards(args.dir, args.count, args.tokenizer)
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return 0


def _train(args) -> int:
    from core.config import load_config
    from pipeline.train.config import TrainConfig
    from pipeline.train.launch import already_distributed, die_with_torchrun_agent, launch_local

    cfg = load_config(TrainConfig, args.config, args.overrides)  # fail here, before starting processes
    if args.nproc > 1 and not already_distributed():
        from pipeline.engines.base import check_layout
        from pipeline.train.trackers import check_packages

        check_layout(cfg, args.nproc)  # a bad layout fails in one line, before torchrun starts
        check_packages(cfg.train.trackers)  # so does a tracker package this machine lacks
        return launch_local(args.nproc, args.argv)
    die_with_torchrun_agent()  # a worker must not outlive its torchrun agent
    import torch.distributed as dist

    from pipeline.distributed import exit_process
    from pipeline.train.loop import train

    try:
        result = train(cfg, resume=args.resume)
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}))
        code = 0
    except NoddError as exc:
        print(f"nodd: error: {exc}", file=sys.stderr)
        code = 1
    finished = code == 0 and result.get("step") == cfg.train.steps  # not stopped early by a signal
    if not (finished and cfg.eval.after_training):
        if dist.is_initialized():
            exit_process(code)  # every rank: barrier, flush, no interpreter teardown (gloo exit crash)
        return code
    # Evaluate on rank 0 alone: the other ranks leave at the barrier, rather than wait in one
    # for as long as the evaluation takes (a collective's timeout would end them mid-way).
    main_rank = not dist.is_initialized() or dist.get_rank() == 0
    if dist.is_initialized():
        dist.barrier()
    if main_rank:
        from pipeline.evaluate import evaluate

        ev = cfg.eval
        try:
            evaluate(cfg.run_dir, ev.per_prompt, ev.extra_prompts, ev.images, ev.steps, ev.cfg_scale or None,
                     ev.videos, ev.frames)
            print(f"evaluated: {cfg.run_dir}/eval.json")
        except NoddError as exc:
            print(f"nodd: error: evaluation failed: {exc}", file=sys.stderr)
            code = 1
    if dist.is_initialized():
        exit_process(code, wait=False)
    return code


def _export(args) -> int:
    from pipeline.inference import export

    out = export(args.run, args.out or f"{args.run}/export")
    print(f"exported -> {out}")
    return 0


def _sample(args) -> int:
    import re
    from pathlib import Path

    from data_prep.shards import save_grid
    from pipeline.inference import load_run, sample_images

    run = load_run(args.run)
    out = Path(args.out or Path(args.run) / "samples")
    out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9]+", "-", args.prompt.lower()).strip("-")[:60] or "empty"
    if args.video:
        from data_prep.builtin.moving_shapes import write_mp4
        from pipeline.inference import sample_videos

        clips = sample_videos(run, args.prompt, args.n, args.frames, args.steps, args.cfg, args.seed, args.temperature)
        for i, clip in enumerate(clips):
            write_mp4(clip, out / f"{name}-seed{args.seed}-{i}.mp4")
        print(f"{len(clips)} clips of {args.frames} frames -> {out}/{name}-seed{args.seed}-*.mp4")
        return 0
    images = sample_images(run, args.prompt, args.n, args.steps, args.cfg, args.seed, args.temperature)
    path = save_grid(images, out / f"{name}-seed{args.seed}.png")
    print(f"{len(images)} images -> {path}")
    return 0


def _caption(args) -> int:
    from pathlib import Path

    import numpy as np

    from core.errors import DataError
    from data_prep.config import ImageConfig
    from data_prep.media import decode_image
    from pipeline.inference import caption_images, load_run

    run = load_run(args.run)
    images = []
    for name in args.images:
        try:
            images.append(decode_image(Path(name), ImageConfig(size=run.image_size))[0])
        except Exception as exc:  # noqa: BLE001 - report which file and why
            raise DataError(f"cannot read image {name}: {exc}") from None
    for name, text in zip(args.images, caption_images(run, np.stack(images))):
        print(f"{name}\t{text}")
    return 0


def _eval(args) -> int:
    from pipeline.evaluate import evaluate

    results = evaluate(args.run, args.per_prompt, args.extra_prompts, args.images, args.steps, args.cfg or None,
                       args.videos, args.frames)
    summary = {"generation.single_object_accuracy": results["generation"]["single_object_accuracy"],
               "generation.overall_accuracy": results["generation"]["overall_accuracy"],
               "understanding.caption_accuracy": results["understanding"]["caption_accuracy"],
               "text.perplexity": results["text"]["perplexity"]}
    print(json.dumps(summary, indent=2))
    print(f"report: {args.run}/report.md")
    return 0


def _demo(args) -> int:
    from pipeline.demo import run_demo

    run_demo(args.out, args.samples, train_steps=args.train_steps, nproc=args.nproc, seed=args.seed)
    return 0


def _cluster(args) -> int:
    from pipeline import cli_cluster

    return cli_cluster.HANDLERS[args.command](args)


HANDLERS = {"tokenizer": _tokenizer, "prep": _prep, "shards": _shards, "train": _train, "export": _export,
            "sample": _sample, "caption": _caption, "eval": _eval, "demo": _demo,
            "submit": _cluster, "jobs": _cluster, "sweep": _cluster, "ablate": _cluster}

if __name__ == "__main__":
    sys.exit(main())

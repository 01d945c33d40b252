"""`nodd eval --run RUN`: what a run learned, on the built-in shapes benchmark (CPU only).

    nodd eval --run runs/train/shapes [--per-prompt 4] [--images 256] [--steps 20] [--cfg 3.0] [--videos 0]

  generation     prompts from an attribute grid (every colour x shape as a single object, plus
                 counts and relations drawn with a held-out seed), images generated, read back
                 by the pixel attribute reader: object / colour / count / position accuracy
                 (GenEval's categories) and overall
  understanding  held-out renders (another seed than any prep default) captioned by the model;
                 correct when the reader finds the caption true of the image; accuracy over all
                 and per scene kind (single, count, relation). 256 images by default: at 64 an
                 accuracy near 0.9 moves by +-0.04 (one binomial standard deviation)
  text           perplexity of the model on held-out captions
  video          (--videos N) clips for held-out moving-shapes captions, read back frame by frame:
                 object, colour and motion direction

Writes RUN/eval.json (generation.single_object_accuracy, generation.overall_accuracy,
understanding.caption_accuracy, text.perplexity, ...) and RUN/report.md with sample grids and
the loss curves.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.builtin.attributes import parse_caption, score_image
from data_prep.builtin.shapes import COLORS, SHAPES, noun_phrase, shapes_sample
from pipeline.inference import LoadedRun, caption_images, load_run, sample_images

HELD_OUT_SEED = 90_001  # never a prep default (shapes uses seed 0 unless told otherwise)


def prompt_grid(extra: int, seed: int = HELD_OUT_SEED) -> list[tuple[str, str]]:
    """(kind, prompt): every colour x shape single object, then `extra` held-out count and
    relation captions from the shapes generator."""
    prompts = [("single", noun_phrase(1, color, shape)) for color in COLORS for shape in SHAPES]
    i = 0
    while len(prompts) < len(COLORS) * len(SHAPES) + extra:
        _, caption, _ = shapes_sample(seed, i)
        spec = parse_caption(caption)
        if spec is not None and spec.kind != "single":
            prompts.append((spec.kind, caption))
        i += 1
    return prompts


def _mean(values: list[bool | None]) -> float | None:
    kept = [bool(v) for v in values if v is not None]
    return round(sum(kept) / len(kept), 4) if kept else None


def evaluate_generation(run: LoadedRun, per_prompt: int, extra: int, steps: int, cfg_scale: float | None,
                        out_dir: Path) -> dict:
    from data_prep.shards import save_grid

    scores: dict[str, list[dict]] = {}
    grid_images = []
    prompts = prompt_grid(extra)
    calls = {"backbone": 0, "head": 0}
    hooks = [part.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, part in (("backbone", run.model.backbone), ("head", run.model.mar_head)) if part is not None]
    seconds = 0.0
    for n, (kind, prompt) in enumerate(prompts):
        started = time.perf_counter()
        images = sample_images(run, prompt, per_prompt, steps, cfg_scale, seed=n)
        seconds += time.perf_counter() - started
        for image in images:
            scores.setdefault(kind, []).append(score_image(image, prompt))
        if kind == "single" or len(grid_images) < 48:
            grid_images.extend(images[:2])
    for hook in hooks:
        hook.remove()
    everything = [s for group in scores.values() for s in group]
    # the images of one prompt are generated together (and their CFG rows with them): one batch
    # of per_prompt images takes the passes below, each image the batch's time / per_prompt
    result = {"prompts": len(prompts), "images": len(everything),
              "seconds_per_image": round(seconds / max(len(everything), 1), 4),
              "transformer_passes_per_image": round(calls["backbone"] / len(prompts), 2),
              "head_passes_per_image": round(calls["head"] / len(prompts), 2),
              "single_object_accuracy": _mean([s["overall"] for s in scores.get("single", [])]),
              "overall_accuracy": _mean([s["overall"] for s in everything])}
    for check in ("object", "color", "count", "position"):
        result[f"{check}_accuracy"] = _mean([s[check] for s in everything])
    for kind, group in scores.items():
        result[f"{kind}_overall"] = _mean([s["overall"] for s in group])
    save_grid(np.stack(grid_images[:96]), out_dir / "eval_generations.png", columns=12)
    return result


def evaluate_video(run: LoadedRun, count: int, frames: int, steps: int, cfg_scale: float | None, out_dir: Path) -> dict:
    """Clips for held-out moving-shapes captions ("a red circle moving left"), read back frame by
    frame: the object's shape and colour, and the direction its centroid moved. Then the other
    way: held-out clips captioned by the model, each caption right when it names the clip's
    colour, shape and direction (`caption_*` keys)."""
    from data_prep.builtin.moving_shapes import moving_clip, parse_motion, score_clip
    from data_prep.shards import save_grid
    from pipeline.inference import caption_videos, sample_videos

    scores, strips = [], []
    for n in range(count):
        prompt = moving_clip(HELD_OUT_SEED + 3, n)[1]
        clip = sample_videos(run, prompt, 1, frames, steps, cfg_scale, seed=n)[0]
        scores.append(score_clip(clip, prompt))
        if n < 8:
            strips.extend(clip)
    save_grid(np.stack(strips), out_dir / "eval_videos.png", columns=frames)
    result = {"clips": count, "frames": frames, **{f"{k}_accuracy": _mean([s[k] for s in scores])
                                                    for k in ("object", "color", "direction", "overall")}}
    held_out = [moving_clip(HELD_OUT_SEED + 4, n, run.image_size, frames) for n in range(count)]
    captions = caption_videos(run, np.stack([clip for clip, _, _ in held_out]))
    said = [parse_motion(c) or (None, None, None) for c in captions]
    truth = [(meta["color"], meta["shape"], meta["direction"]) for _, _, meta in held_out]
    for i, part in enumerate(("color", "shape", "direction")):
        result[f"caption_{part}_accuracy"] = _mean([s[i] == t[i] for s, t in zip(said, truth)])
    result["caption_accuracy"] = _mean([s == t for s, t in zip(said, truth)])
    result["caption_examples"] = [{"truth": meta["caption"], "caption": c} for (_, _, meta), c in
                                  zip(held_out[:8], captions)]
    return result


def evaluate_understanding(run: LoadedRun, count: int, out_dir: Path) -> dict:
    from data_prep.shards import save_grid

    images, truths, metas = zip(*[shapes_sample(HELD_OUT_SEED + 1, i, run.image_size) for i in range(count)])
    images = np.stack(images)
    captions = caption_images(run, images)
    correct = []
    for image, caption in zip(images, captions):
        correct.append(parse_caption(caption) is not None and bool(score_image(image, caption)["overall"]))
    save_grid(images[:16], out_dir / "eval_captioned.png", columns=8)
    examples = [{"truth": t, "caption": c, "correct": ok} for t, c, ok in zip(truths[:16], captions[:16], correct)]
    result = {"images": count, "caption_accuracy": _mean(correct)}
    for kind in sorted({meta["kind"] for meta in metas}):
        result[f"{kind}_accuracy"] = _mean([ok for ok, meta in zip(correct, metas) if meta["kind"] == kind])
    return result | {"examples": examples}


@torch.no_grad()
def text_perplexity(run: LoadedRun, count: int) -> dict:
    from model.batch import Document, Packer

    text = run.text
    docs = [Document("text", text.encode(shapes_sample(HELD_OUT_SEED + 2, i)[1])) for i in range(count)]
    packer = Packer(run.model.cfg, text.bos_id, text.eos_id, text.pad_id)
    out = run.model(packer.pack(docs))
    return {"captions": count, "perplexity": round(math.exp(float(out.losses["text"])), 4)}


def evaluate(run_path: str | Path, per_prompt: int = 4, extra: int = 24, images: int = 256, steps: int = 20,
             cfg_scale: float | None = 3.0, videos: int = 0, frames: int = 8) -> dict:
    """`videos` > 0: also `videos` clips of `frames` frames (a run trained on moving shapes)."""
    run_path = Path(run_path)
    run = load_run(run_path)
    torch.manual_seed(0)
    results = {"checkpoint": run.meta.get("checkpoint", str(run_path)), "mode": run.model.cfg.mode,
               "generation": evaluate_generation(run, per_prompt, extra, steps, cfg_scale, run_path),
               "understanding": evaluate_understanding(run, images, run_path),
               "text": text_perplexity(run, images),
               "settings": {"per_prompt": per_prompt, "steps": steps, "cfg_scale": cfg_scale}}
    if videos > 0:
        results["video"] = evaluate_video(run, videos, frames, steps, cfg_scale, run_path)
    (run_path / "eval.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    write_report(run_path, results)
    if (run_path / "train_config.toml").is_file():  # a run directory: its MLflow / W&B runs get the report
        from core.config import from_dict, read_toml
        from pipeline.train.config import LoopConfig
        from pipeline.train.trackers import log_evaluation

        # the train section alone: the whole config would validate the model again (model.init_from's folder)
        settings = from_dict(LoopConfig, read_toml(run_path / "train_config.toml").get("train", {}), "train")
        log_evaluation(run_path, settings, results)
    return results


def write_report(run_path: Path, results: dict) -> Path:
    """report.md: metrics table, sample grids, loss curves (matplotlib, when metrics exist)."""
    lines = [f"# Run report: {run_path.name}", "", f"checkpoint `{results['checkpoint']}`, mode `{results['mode']}`", "",
             "| metric | value |", "| --- | --- |"]
    for section in ("generation", "understanding", "text", "video"):
        for key, value in results.get(section, {}).items():
            if not isinstance(value, (list, dict)):
                lines.append(f"| {section}.{key} | {value} |")
    lines += ["", "## Generations (2 per prompt; single objects first)", "", "![generations](eval_generations.png)",
              "", "## Captioned held-out images", "", "![captioned](eval_captioned.png)", "",
              "| truth | model caption | correct |", "| --- | --- | --- |"]
    lines += [f"| {e['truth']} | {e['caption']} | {'yes' if e['correct'] else 'no'} |"
              for e in results["understanding"]["examples"]]
    if "video" in results:
        lines += ["", "## Generated clips (one row each, held-out captions)", "", "![clips](eval_videos.png)"]
    curve = plot_losses(run_path)
    if curve is not None:
        lines += ["", "## Loss curves", "", f"![losses]({curve.name})"]
    validation = read_jsonl(run_path / "validation.jsonl")
    if validation:  # train.eval_every: the held-out losses (prep's split.val_fraction)
        last = validation[-1]
        lines += ["", f"Validation at step {last['step']} (held-out rows, dashed above): "
                  + ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "text", "understanding", "image"))]
    path = run_path / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a metrics file ([] when it does not exist)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(run_path: Path) -> Path | None:
    """losses.png: the training losses, and the validation losses (validation.jsonl, written under
    train.eval_every) dashed in the same colours."""
    records = read_jsonl(run_path / "metrics.jsonl")
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validation = read_jsonl(run_path / "validation.jsonl")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "text", "understanding", "image"):
        line, = ax.plot([r["step"] for r in records], [r[key] for r in records], label=key)
        if validation:
            ax.plot([r["step"] for r in validation], [r[key] for r in validation], "--o", markersize=3,
                    color=line.get_color(), label=f"validation {key}")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2 if validation else 1)
    ax.grid(alpha=0.3)
    path = run_path / "losses.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path

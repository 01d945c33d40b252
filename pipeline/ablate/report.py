"""`nodd ablate report`: every arm's seeds into RUN_ROOT/report.md, with plots and the claims.

Each arm is summarised by the mean and spread (sample standard deviation) over its seeds; two
arms differ only where their means are further apart than their spreads added, otherwise the
report says "no difference". An arm's role (transfusion, MAR, VAR, discrete AR...) is read from
its own model config, so the claims hold for any arm names.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from core.config import load_config
from core.errors import ConfigError
from pipeline.ablate.spec import load_spec

METRICS = [  # key in a run summary, column title, digits
    ("overall", "generation overall", 3), ("single", "single", 3), ("count", "count", 3), ("position", "position", 3),
    ("caption", "captions", 3), ("perplexity", "text ppl", 2), ("seconds_per_image", "s / image", 3),
    ("passes", "passes / image", 1), ("head_passes", "head passes", 0), ("flops", "train FLOPs", 3),
    ("wall", "train wall s", 0)]
ROLES = {"transfusion": "transfusion (flow in the transformer)", "mar-ar": "MAR-AR (causal, flow head)",
         "mar-masked": "MAR-masked (flow head)", "var-continuous": "VAR-continuous (flow head)",
         "discrete-ar": "discrete AR", "var-discrete": "VAR-discrete"}


def role(model) -> str:
    if model.mode == "transfusion":
        return "transfusion"
    if model.mode == "discrete":
        return "var-discrete" if model.next_scale_images else "discrete-ar"
    if model.next_scale_images:
        return "var-continuous"
    return "mar-masked" if model.mar_order == "masked" else "mar-ar"


def run_summary(run_dir: str | Path) -> dict | None:
    """One seed of one arm from its eval.json and metrics.jsonl; None until it has finished."""
    run_dir = Path(run_dir)
    if not (run_dir / "eval.json").is_file():
        return None
    ev = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    flops, curve = 0.0, []
    for r in records:
        flops += r.get("flops", 0.0)
        curve.append((flops, r["loss"]))
    times = [r["time"] for r in records if "time" in r]
    # each record closes one logging interval: the first one's length is estimated from the rest
    wall = (times[-1] - times[0]) * len(times) / (len(times) - 1) if len(times) > 1 else None
    gen, und = ev["generation"], ev["understanding"]
    return {"replicas": _replicas(run_dir), "overall": gen["overall_accuracy"], "single": gen["single_object_accuracy"],
            "count": gen.get("count_accuracy"), "position": gen.get("position_accuracy"),
            "caption": und["caption_accuracy"], "perplexity": ev["text"]["perplexity"],
            "seconds_per_image": gen.get("seconds_per_image"), "passes": gen.get("transformer_passes_per_image"),
            "head_passes": gen.get("head_passes_per_image"), "flops": flops or None, "wall": wall, "curve": curve}


def _replicas(run_dir: Path) -> int:
    """Data-parallel replicas of a run (its newest checkpoint's layout): each draws its own
    batches, so the run's logged FLOPs are that many times one loader's, the plan's budget."""
    metas = sorted((run_dir / "checkpoints").glob("step-*/meta.json"))
    if not metas:
        return 1
    layout = json.loads(metas[-1].read_text(encoding="utf-8")).get("parallel", {})
    return int(layout.get("dp_replicate", 1)) * int(layout.get("dp_shard", 1))


def aggregate(values: list) -> tuple[float | None, float | None]:
    kept = [v for v in values if v is not None]
    if not kept:
        return None, None
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0


def differs(a: tuple, b: tuple) -> int:
    """+1 / -1 where a's mean is above / below b's by more than both spreads, else 0."""
    (ma, sa), (mb, sb) = a, b
    if ma is None or mb is None or abs(ma - mb) <= (sa or 0) + (sb or 0):
        return 0
    return 1 if ma > mb else -1


def collect(path: str, preset: str | None = None) -> dict:
    from pipeline.train.config import TrainConfig

    spec = load_spec(path, preset)
    plan_path = spec.root / "ablation.json"
    if not plan_path.is_file():
        raise ConfigError(f"{plan_path} does not exist: run the ablation first (nodd ablate --config {path})")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    arms = {}
    for arm in plan["arms"]:
        runs = [r for r in plan["runs"] if r["arm"] == arm["name"]]
        summaries = [s for s in (run_summary(r["run_dir"]) for r in runs) if s is not None]
        model = load_config(TrainConfig, spec.train_config, runs[0]["overrides"]).model
        stats = {key: aggregate([s[key] for s in summaries]) for key, _, _ in METRICS}
        arms[arm["name"]] = {"role": role(model), "tokenizer": arm["tokenizer"], "steps": runs[0]["steps"],
                             "seeds": len(summaries), "planned": len(runs), "stats": stats,
                             "replicas": summaries[0]["replicas"] if summaries else 1,
                             "curves": [s["curve"] for s in summaries]}
    tokenizers = {}
    for tok in plan["tokenizers"]:
        metrics_path = spec.root / "data" / "tokenizers" / tok["name"] / "metrics.json"
        tokenizers[tok["name"]] = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    return {"spec": spec, "plan": plan, "arms": arms, "tokenizers": tokenizers}


def report(path: str, preset: str | None = None) -> Path:
    from pipeline.ablate.plots import plot_all

    found = collect(path, preset)
    spec, plan, arms, tokenizers = found["spec"], found["plan"], found["arms"], found["tokenizers"]
    root = spec.root
    lines = [f"# Ablation {plan['name']}" + (f" (preset {plan['preset']})" if plan.get("preset") else ""), "",
             f"Target {plan['target']}; {plan['seeds']} seeds per arm; every arm trains for the FLOPs of "
             f"`{plan['reference_arm']}` at its steps ({plan['budget_flops']:.3g} FLOPs per data-parallel replica; the "
             f"train FLOPs column adds up every replica's; pipeline/train/metrics.py "
             "FlopCounter, MAR's head passes included). Cells are mean ± spread (sample std) over the seeds.", "",
             "## Tokenizers", "", *tokenizer_table(tokenizers), "", "## Arms", "", *arm_table(arms, plan["budget_flops"]),
             "", "## Claims", ""]
    lines += [f"- {text}" for text in claims(arms, tokenizers)]
    plots = plot_all(arms, tokenizers, root)
    lines += ["", "## Plots", ""] + [f"![{name}]({file.name})" for name, file in plots.items()]
    out = root / "report.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def tokenizer_table(tokenizers: dict) -> list[str]:
    rows = ["| tokenizer | kind | latent | vocabulary | bits / image | PSNR dB | codebook used |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in tokenizers.items():
        b = m.get("info_budget") or {}
        if b.get("kind") == "kl":
            latent, vocab = "x".join(map(str, b["latent_shape"])) + f" {b['dtype']}", "continuous"
            bits = f"{b['bits_per_image']:,} (raw {b['dtype']}: an upper bound)"
        else:
            latent, vocab = f"{b.get('tokens', '-')} codes", str(b.get("vocab", "-"))
            bits = f"{b['bits_per_image']:,.0f} = {b['tokens']} x log2 {b['vocab']}" if b else "-"
        used = m.get("codebook_utilisation")
        rows.append(f"| {name} | {b.get('kind', '-')} | {latent} | {vocab} | {bits} | "
                    f"{m.get('psnr', float('nan')):.2f} | {'-' if used is None else f'{used:.0%}'} |")
    return rows


def fmt(stat: tuple, digits: int) -> str:
    mean, spread = stat
    if mean is None:
        return "-"
    if digits == 3 and abs(mean) >= 1e6:  # FLOPs
        return f"{mean:.3g} ± {spread:.1g}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def arm_table(arms: dict, budget: float) -> list[str]:
    head = ["arm", "role", "tokenizer", "steps", "seeds", "FLOPs / budget", *[title for _, title, _ in METRICS]]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, a in arms.items():
        flops = a["stats"]["flops"][0]
        ratio = f"{flops / (budget * a['replicas']):.3f}" if flops else "-"  # the budget is one replica's
        cells = [name, ROLES[a["role"]], a["tokenizer"], str(a["steps"]), f"{a['seeds']}/{a['planned']}", ratio,
                 *[fmt(a["stats"][key], digits) for key, _, digits in METRICS]]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _by_role(arms: dict, *roles: str) -> list[tuple[str, dict]]:
    return [(n, a) for n, a in arms.items() if a["role"] in roles and a["stats"]["overall"][0] is not None]


def _say(stat: tuple) -> str:
    return "-" if stat[0] is None else f"{stat[0]:.3f} ± {stat[1]:.3f}"


def claims(arms: dict, tokenizers: dict) -> list[str]:
    """One paragraph per claim of the DD question: what this run supports or contradicts."""
    out = []
    kl = [m for m in tokenizers.values() if (m.get("info_budget") or {}).get("kind") == "kl"]
    discrete_tok = {n: m for n, m in tokenizers.items() if (m.get("info_budget") or {}).get("kind") in ("vq", "fsq")}
    cont, disc = _by_role(arms, "mar-ar", "var-continuous"), _by_role(arms, "discrete-ar", "var-discrete")
    text = "**Discrete tokens lose information.** "
    if kl and discrete_tok:
        best = max(discrete_tok.items(), key=lambda kv: kv[1].get("psnr", -math.inf))
        gap = kl[0]["psnr"] - best[1]["psnr"]
        text += (f"Reconstruction PSNR: KL {kl[0]['psnr']:.2f} dB, best discrete ({best[0]}) {best[1]['psnr']:.2f} dB: "
                 + ("supported, the codes lose " if gap > 0 else "contradicted, the codes gain ") + f"{abs(gap):.2f} dB. ")
    pairs = [(c, d) for c in cont for d in disc if (c[1]["role"] == "mar-ar") == (d[1]["role"] == "discrete-ar")]
    for (cn, ca), (dn, da) in pairs:
        verdict = {1: "continuous is better", -1: "discrete is better", 0: "no difference"}[
            differs(ca["stats"]["overall"], da["stats"]["overall"])]
        text += f"Generation (same order): {cn} {_say(ca['stats']['overall'])} vs {dn} {_say(da['stats']['overall'])}: {verdict}. "
    out.append(text.strip())

    diffusion = _by_role(arms, "transfusion", "mar-ar", "mar-masked", "var-continuous")
    plain = _by_role(arms, "discrete-ar", "var-discrete")
    text = "**Diffusion is slow.** "
    if diffusion and plain:
        fast_d = min(diffusion, key=lambda kv: kv[1]["stats"]["seconds_per_image"][0] or math.inf)
        fast_p = min(plain, key=lambda kv: kv[1]["stats"]["seconds_per_image"][0] or math.inf)
        sign = differs(fast_d[1]["stats"]["seconds_per_image"], fast_p[1]["stats"]["seconds_per_image"])
        verdict = {1: "supported", -1: "contradicted", 0: "no difference"}[sign]
        text += (f"Fastest diffusion arm {fast_d[0]}: {_say(fast_d[1]['stats']['seconds_per_image'])} s per image "
                 f"({fast_d[1]['stats']['passes'][0]:.0f} transformer passes, {fast_d[1]['stats']['head_passes'][0]:.0f} head passes); "
                 f"fastest arm without diffusion {fast_p[0]}: {_say(fast_p[1]['stats']['seconds_per_image'])} s "
                 f"({fast_p[1]['stats']['passes'][0]:.0f} passes): {verdict}.")
    out.append(text.strip())

    heads, full = _by_role(arms, "mar-ar", "mar-masked", "var-continuous"), _by_role(arms, "transfusion")
    text = "**A small head on a per-token condition is enough.** "
    if heads and full:
        best = max(heads, key=lambda kv: kv[1]["stats"]["overall"][0])
        sign = differs(best[1]["stats"]["overall"], full[0][1]["stats"]["overall"])
        verdict = {1: "supported (better)", 0: "supported (no worse)", -1: "contradicted (worse)"}[sign]
        text += (f"Best head arm {best[0]} {_say(best[1]['stats']['overall'])} vs {full[0][0]} "
                 f"{_say(full[0][1]['stats']['overall'])} overall generation accuracy: {verdict}.")
    out.append(text.strip())

    ar, dar = _by_role(arms, "mar-ar"), _by_role(arms, "discrete-ar")
    text = "**Continuous beats discrete in AR.** "
    if ar and dar:
        parts = []
        for dn, da in dar:
            sign = differs(ar[0][1]["stats"]["overall"], da["stats"]["overall"])
            parts.append(f"{ar[0][0]} {_say(ar[0][1]['stats']['overall'])} vs {dn} {_say(da['stats']['overall'])}: "
                         + {1: "supported", -1: "contradicted", 0: "no difference"}[sign])
        text += "; ".join(parts) + "."
    out.append(text.strip())
    return [t + " Not measured: an arm it needs is missing or unfinished." if t.endswith("**") else t for t in out]

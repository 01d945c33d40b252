"""`nodd sweep`: submit every valid combination of a grid, then report on the run directories.

    nodd sweep --config configs/sweep/shapes_scaling.toml [--target slurm] [--dry-run]
    nodd sweep report --config configs/sweep/shapes_scaling.toml     (or: nodd sweep report RUN_ROOT)

Before anything is submitted each combination is resolved like a single job (pipeline/jobs.py):
invalid ones (degrees that do not divide the world size, heads not divisible by tp, depth by pp)
are listed with the reason and skipped. RUN_ROOT/sweep.json records the plan; the report reads
each run's metrics.jsonl into RUN_ROOT/report.md (one table) and RUN_ROOT/report.png.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from cluster.sweep import SweepSpec, expand
from core.config import load_config
from core.errors import ConfigError, NoddError
from pipeline.jobs import load_job, prepare, submit


def run_sweep(path: str, target: str | None = None, dry_run: bool = False) -> str:
    sweep = load_config(SweepSpec, path)
    target = target or sweep.target
    points = expand(sweep)
    plan, lines, valid = [], [], []
    for point in points:
        entry = {"name": point.name, "params": point.params, "run_dir": point.run_dir}
        try:
            spec = load_job(sweep.job, point.job_overrides, point.config_overrides)
            valid.append((point, spec, prepare(spec, target)))  # resolves and checks the command's config
        except ConfigError as exc:
            entry["invalid"] = str(exc)
            lines.append(f"skipped {point.name} {point.params}: {exc}")
        plan.append(entry)
    if not valid:
        raise ConfigError(f"no valid combination in sweep {sweep.name}:\n  " + "\n  ".join(lines))
    root = Path(points[0].run_dir).parent
    for entry, (point, spec, job) in zip([e for e in plan if "invalid" not in e], valid):
        try:
            record, _ = submit(spec, target, dry_run, job)
        except NoddError as exc:
            entry["error"] = str(exc)
            lines.append(f"failed  {point.name}: {exc}")
            continue
        entry["job"] = record.id if record else None
        lines.append(f"{'would submit' if dry_run else 'submitted'} {point.name} {point.params}"
                     + (f" -> {record.id}" if record else ""))
    if not dry_run:
        root.mkdir(parents=True, exist_ok=True)
        (root / "sweep.json").write_text(json.dumps({"sweep": sweep.name, "target": target, "jobs": plan}, indent=2),
                                         encoding="utf-8")
        lines.append(f"plan: {root / 'sweep.json'}; afterwards: nodd sweep report {root}")
    return "\n".join(lines)


def summarize_run(run_dir: Path) -> dict:
    """Throughput, MFU, memory and the final losses of one run from its metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        return {}
    steady = records[1:] or records  # the first interval includes start-up and compilation

    def median(key):
        values = [r[key] for r in steady if key in r]
        return statistics.median(values) if values else None

    last = records[-1]
    return {"step": last["step"], "loss": last.get("loss"), "text": last.get("text"), "image": last.get("image"),
            "tokens_per_s": median("tokens_per_s"), "mfu": median("mfu"),
            "memory_gib": max((r.get("memory_gib", 0) for r in records), default=None),
            "curve": [(r["step"], r["loss"]) for r in records]}


def report(source: str) -> Path:
    """source: the sweep's TOML or its run root. Writes report.md and report.png there."""
    root = Path(source)
    if root.is_file():
        sweep = load_config(SweepSpec, root)
        root = Path(sweep.run_root or f"runs/sweeps/{sweep.name}")
    plan_path = root / "sweep.json"
    if not plan_path.is_file():
        raise ConfigError(f"{plan_path} does not exist: submit the sweep first (nodd sweep --config ...)")
    plan = json.loads(plan_path.read_text(encoding="utf-8"))
    keys = list(plan["jobs"][0]["params"]) if plan["jobs"] else []
    header = ["job", *keys, "state", "step", "final loss", "tokens/s", "MFU", "peak memory GiB"]
    rows, curves = [], {}
    for entry in plan["jobs"]:
        run = summarize_run(Path(entry["run_dir"]))
        state = "invalid" if "invalid" in entry else "failed to submit" if "error" in entry else (
            "no metrics yet" if not run else "ran")
        fmt = {"step": run.get("step", "-"), "loss": _num(run.get("loss"), 4), "tps": _num(run.get("tokens_per_s"), 0),
               "mfu": f"{run['mfu']:.1%}" if run.get("mfu") is not None else "-",
               "mem": _num(run.get("memory_gib"), 2)}
        rows.append([entry["name"], *[str(entry["params"][k]) for k in keys], state, str(fmt["step"]), fmt["loss"],
                     fmt["tps"], fmt["mfu"], fmt["mem"]])
        if run.get("curve"):
            curves[entry["name"]] = (run["curve"], run.get("tokens_per_s"))
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    out = root / "report.md"
    out.write_text(f"# Sweep {plan['sweep']} ({plan['target']})\n\n" + "\n".join(table)
                   + "\n\n![loss and throughput](report.png)\n", encoding="utf-8")
    _plot(curves, root / "report.png")
    return out


def _num(value, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (losses, speed) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (curve, _) in curves.items():
        steps, values = zip(*curve)
        losses.plot(steps, values, label=name)
    losses.set(xlabel="step", ylabel="training loss", title="loss")
    if curves:
        losses.legend(fontsize=7)
    names = [n for n, (_, tps) in curves.items() if tps]
    speed.bar(range(len(names)), [curves[n][1] for n in names])
    speed.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    speed.set(ylabel="tokens/s (median)", title="throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

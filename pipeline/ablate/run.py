"""Arms x seeds as jobs: each arm's train config (the shared recipe, the arm's overrides, its
tokenizer's shards), its steps set so that every arm trains for the reference arm's FLOPs, and an
evaluation when its training ends (`eval.after_training`), so one job is one finished arm on any
target. RUN_ROOT/ablation.json records the plan; `--resume` skips the arms whose eval.json exists
and waits for those still running, and a resubmitted arm continues from its checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.config import load_config, toml_value
from core.errors import ClusterError, ConfigError, NoddError
from pipeline.ablate.data import PreparedData, prepare_data, prepared, text_tokenizer
from pipeline.ablate.spec import AblateSpec, ArmSpec, load_spec
from pipeline.train.config import TrainConfig

# Steps of the arm's own loader that are counted one by one; beyond them an arm is extrapolated
# at the rate of their second half. The first batches are packed from a fresh window, longest
# documents first (generations, for most arms), and cost 10-40% more than later ones: counting
# them as they come keeps short runs matched too.
FLOP_COUNTED_STEPS = 64


@dataclass
class ArmRun:
    arm: str
    seed: int
    name: str  # the job's name
    run_dir: str
    steps: int
    flops: float  # planned training FLOPs (FlopCurve)
    overrides: list[str]
    job: str | None = None  # the job id, once submitted

    @property
    def done(self) -> bool:
        return (Path(self.run_dir) / "eval.json").is_file()


def arm_overrides(spec: AblateSpec, arm: ArmSpec, data: PreparedData, text: tuple[Path, int], seed: int,
                  steps: int) -> list[str]:
    """The train config overrides of one arm and seed: the shared ones, the arm's, then what the
    tokenizers dictate (the shards, latent shape or codebook; `text`: the BPE's path and vocabulary)
    and the seed, steps and evaluation."""
    budget = data.metrics["info_budget"]
    if budget["kind"] == "kl":
        channels, size = budget["latent_shape"][0], budget["latent_shape"][-1]
        image = [f"model.latent_channels={channels}", f"model.latent_size={size}"]
    else:
        image = [f"model.codebook_size={budget['vocab']}"]
    quoted = lambda p: toml_value(str(p))  # noqa: E731
    ev = spec.eval
    return [*spec.train_overrides, *arm.overrides, *image,
            f"data.shards={quoted(data.shards)}", f"data.tokenizer={quoted(data.tokenizer)}",
            f"data.text_tokenizer={quoted(text[0])}", f"model.text_vocab_size={text[1]}",
            f"train.seed={seed}", f"data.seed={seed}", f"train.steps={steps}",
            "eval.after_training=true", f"eval.per_prompt={ev.per_prompt}", f"eval.extra_prompts={ev.extra_prompts}",
            f"eval.images={ev.images}", f"eval.steps={ev.steps}", f"eval.cfg_scale={ev.cfg_scale}"]


class FlopCurve:
    """Training FLOPs of an arm's first N steps, from its own loader: the first
    FLOP_COUNTED_STEPS counted batch by batch, later steps at the rate of their second half."""

    def __init__(self, cfg: TrainConfig):
        from pipeline.data.loader import PackedLoader
        from pipeline.train.metrics import FlopCounter

        loader, count, accum = PackedLoader(cfg.data, cfg.model), FlopCounter(cfg.model), cfg.optim.grad_accum
        self.per_step = [sum(count(loader.next_batch()) for _ in range(accum)) for _ in range(FLOP_COUNTED_STEPS)]
        self.rate = sum(self.per_step[FLOP_COUNTED_STEPS // 2:]) / (FLOP_COUNTED_STEPS - FLOP_COUNTED_STEPS // 2)

    def total(self, steps: int) -> float:
        counted = min(steps, len(self.per_step))
        return sum(self.per_step[:counted]) + (steps - counted) * self.rate

    def steps_for(self, budget: float) -> int:
        """The step count whose FLOPs come nearest the budget (at least 1)."""
        steps = 1
        while steps < len(self.per_step) and self.total(steps + 1) <= budget:
            steps += 1
        if steps == len(self.per_step):
            steps += int((budget - self.total(steps)) // self.rate)
        return steps + 1 if abs(self.total(steps + 1) - budget) < abs(self.total(steps) - budget) else steps


def plan(spec: AblateSpec, data: dict[str, PreparedData], text: Path) -> list[ArmRun]:
    """Every arm x seed with its FLOP-matched steps: the reference arm trains `spec.steps` steps,
    every other arm the step count whose FLOPs come nearest the same total."""
    from model.tokenizers import load_text_tokenizer

    text = (text, load_text_tokenizer(str(text)).vocab_size)
    curves = {}
    for arm in spec.arms:
        probe = arm_overrides(spec, arm, data[arm.tokenizer], text, 0, spec.steps)
        curves[arm.name] = FlopCurve(load_config(TrainConfig, spec.train_config, probe))
    budget = curves[spec.reference.name].total(spec.steps)
    runs = []
    for arm in spec.arms:
        steps = spec.steps if arm.name == spec.reference.name else curves[arm.name].steps_for(budget)
        for seed in range(spec.seeds):
            name = f"{spec.name}-{arm.name}-s{seed}"
            runs.append(ArmRun(arm.name, seed, name, str(spec.root / "arms" / f"{arm.name}-s{seed}"), steps,
                               curves[arm.name].total(steps), arm_overrides(spec, arm, data[arm.tokenizer], text,
                                                                           seed, steps)))
    return runs


def run_ablation(path: str, preset: str | None = None, target: str | None = None, seeds: int | None = None,
                 resume: bool = False, dry_run: bool = False, poll: float = 5.0) -> str:
    """The data stage, then every arm x seed not yet finished as a job; on the local target one
    at a time (max_running), waiting for each. Prints its progress as it goes and returns it."""
    spec = load_spec(path, preset, {"seeds": seeds} if seeds else None)
    target = target or spec.target
    plan_path = spec.root / "ablation.json"
    if plan_path.is_file() and not (resume or dry_run):
        raise ConfigError(f"{spec.root} already holds an ablation; pass --resume to finish it, or set a new run_root")
    data = prepared(spec) if dry_run else prepare_data(spec)
    if data is None:
        message = (f"dry run: the data stage has not run yet ({spec.root / 'data'}); without it the arms' "
                   "FLOP-matched steps are unknown. Run without --dry-run to prepare it.")
        print(message)
        return message
    runs = plan(spec, data, text_tokenizer(spec))
    earlier = _recorded_jobs(plan_path) if resume else {}
    for run in runs:
        run.job = earlier.get(run.name)
    lines = _Lines()
    for run in runs:
        lines.append(f"{run.name}: {run.steps} steps, {run.flops:.3g} FLOPs" + (" (done)" if run.done else ""))
    if not dry_run:
        spec.root.mkdir(parents=True, exist_ok=True)
        _save_plan(plan_path, spec, target, preset, runs)
    limit = spec.max_running or (1 if target == "local" else 0)
    _schedule(spec, target, runs, limit, dry_run, poll, lambda: _save_plan(plan_path, spec, target, preset, runs), lines)
    if not dry_run:
        lines.append(f"plan: {plan_path}; report: nodd ablate report --config {path}"
                     + (f" --preset {preset}" if preset else ""))
    return "\n".join(lines)


class _Lines(list):
    """Progress lines, printed as they come (a local grid runs for hours)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)


def _schedule(spec: AblateSpec, target: str, runs: list[ArmRun], limit: int, dry_run: bool, poll: float,
              save, lines: _Lines) -> None:
    """Submit the unfinished runs, at most `limit` running at once (0: all, without waiting)."""
    from pipeline.jobs import job_status, load_job, submit

    running = {}
    for run in runs:  # a job an interrupted `nodd ablate` left running is waited for, not doubled
        if run.job and not run.done and not dry_run and _still_running(run.job):
            running[run.job] = run
    pending = [r for r in runs if not r.done and r not in running.values()]
    while pending or (running and limit):
        while pending and (not limit or len(running) < limit):
            run = pending.pop(0)
            job = load_job(spec.job, [*spec.job_overrides, 'command="train"', f"config={toml_value(spec.train_config)}",
                                      f"name={toml_value(run.name)}", f"run_dir={toml_value(run.run_dir)}"],
                           run.overrides)
            try:
                record, report = submit(job, target, dry_run)
            except NoddError as exc:
                lines.append(f"failed to submit {run.name}: {exc}")
                continue
            lines.append(report.splitlines()[0] if not dry_run else f"would submit {run.name}")
            if record is not None:
                run.job = record.id
                save()
                if limit:
                    running[record.id] = run
        if dry_run or not running:
            break
        time.sleep(poll)
        for job_id, run in list(running.items()):
            _, status = job_status(job_id)
            if status.finished:
                del running[job_id]
                word = "finished" if run.done else f"ended {status.state} without eval.json (see {run.run_dir}/logs)"
                lines.append(f"{run.name} {word}")


def _still_running(job_id: str) -> bool:
    from pipeline.jobs import job_status

    try:
        return not job_status(job_id)[1].finished
    except (ClusterError, NoddError):
        return False


def _recorded_jobs(plan_path: Path) -> dict[str, str]:
    if not plan_path.is_file():
        return {}
    return {r["name"]: r["job"] for r in json.loads(plan_path.read_text(encoding="utf-8"))["runs"] if r.get("job")}


def _save_plan(path: Path, spec: AblateSpec, target: str, preset: str | None, runs: list[ArmRun]) -> None:
    from core.files import write_text_atomic

    record = {"version": 1, "name": spec.name, "target": target, "preset": preset, "seeds": spec.seeds,
              "reference_arm": spec.reference.name, "budget_flops": _budget(spec, runs),
              "arms": [asdict(a) for a in spec.arms], "tokenizers": [asdict(t) for t in spec.tokenizers],
              "runs": [asdict(r) for r in runs]}
    write_text_atomic(path, json.dumps(record, indent=2))


def _budget(spec: AblateSpec, runs: list[ArmRun]) -> float:
    return next(r for r in runs if r.arm == spec.reference.name).flops

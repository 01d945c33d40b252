"""The cluster commands of `nodd` (see pipeline/cli.py for the rest).

    nodd submit --target local|slurm|ray|k8s --job configs/cluster/shapes_train.toml [--dry-run]
                [--set train.steps=50 ...] [nodes=2 slurm.account=abc ...]
    nodd jobs list
    nodd jobs status ID [--wait] [--timeout 3600]
    nodd jobs logs ID
    nodd jobs cancel ID
    nodd sweep [submit] --config configs/sweep/shapes_scaling.toml [--target slurm] [--dry-run]
    nodd sweep report (--config configs/sweep/shapes_scaling.toml | RUN_ROOT)
    nodd ablate [run] --config configs/ablate/dd.toml [--preset quick] [--target slurm] [--seeds 3] [--resume]
    nodd ablate report --config configs/ablate/dd.toml [--preset quick]
"""

from __future__ import annotations

import argparse
import sys

from cluster.targets import TARGETS


def add_parsers(commands) -> None:
    sub = commands.add_parser("submit", help="run a job (train, prep, tokenizer) locally or on Slurm, Ray, Kubernetes")
    sub.add_argument("--target", required=True, choices=TARGETS)
    sub.add_argument("--job", required=True, help="job spec TOML (see configs/cluster/)")
    sub.add_argument("--dry-run", action="store_true", help="print what would be written and submitted; do nothing")
    sub.add_argument("--set", dest="config_overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override the job's command config (repeatable), e.g. --set train.steps=50")
    sub.add_argument("overrides", nargs="*", help="job spec overrides, e.g. nodes=2 procs_per_node=8")

    jobs = commands.add_parser("jobs", help="list, follow and cancel submitted jobs")
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="every submitted job and its state")
    status = actions.add_parser("status", help="a job's state from its scheduler")
    status.add_argument("id")
    status.add_argument("--wait", action="store_true", help="wait until it finishes; exit 0 only if it completed")
    status.add_argument("--timeout", type=float, default=3600, help="seconds to wait at most (default 3600)")
    logs = actions.add_parser("logs", help="a job's output so far")
    logs.add_argument("id")
    cancel = actions.add_parser("cancel", help="cancel a job (training checkpoints first)")
    cancel.add_argument("id")

    sweep = commands.add_parser("sweep", help="a grid of jobs, checked then submitted; `sweep report` sums them up")
    sweep.add_argument("action", nargs="?", choices=["submit", "report"], default="submit")
    sweep.add_argument("source", nargs="?", help="report: the sweep's run root (instead of --config)")
    sweep.add_argument("--config", help="sweep TOML (see configs/sweep/)")
    sweep.add_argument("--target", choices=TARGETS, help="override the sweep's target")
    sweep.add_argument("--dry-run", action="store_true")

    abl = commands.add_parser("ablate", help="the DD ablation: tokenizers, arms x seeds at equal FLOPs, report.md")
    abl.add_argument("action", nargs="?", choices=["run", "report"], default="run")
    abl.add_argument("--config", required=True, help="ablation TOML (see configs/ablate/)")
    abl.add_argument("--preset", help="a [presets.NAME] table of the config, e.g. quick or full")
    abl.add_argument("--target", choices=TARGETS, help="override the ablation's target")
    abl.add_argument("--seeds", type=int, help="seeds per arm (default: the config's)")
    abl.add_argument("--resume", action="store_true", help="finish an interrupted ablation: skip finished arms")
    abl.add_argument("--dry-run", action="store_true", help="print the plan and the jobs; submit nothing")


def submit(args: argparse.Namespace) -> int:
    from pipeline.jobs import load_job
    from pipeline.jobs import submit as submit_job

    spec = load_job(args.job, args.overrides, args.config_overrides)
    _, message = submit_job(spec, args.target, args.dry_run)
    print(message, end="" if message.endswith("\n") else "\n")
    return 0


def jobs(args: argparse.Namespace) -> int:
    from pipeline import jobs as j

    if args.jobs_command == "list":
        print(j.table())
    elif args.jobs_command == "status":
        if args.wait:
            status = j.wait_for(args.id, args.timeout)
        else:
            _, status = j.job_status(args.id)
        print(f"{args.id} {status.state} {status.detail}".rstrip())
        return 0 if not args.wait or status.state == "COMPLETED" else 1
    elif args.jobs_command == "logs":
        sys.stdout.write(j.job_logs(args.id))
    else:
        j.cancel(args.id)
        print(f"cancel requested for {args.id}")
    return 0


def ablate(args: argparse.Namespace) -> int:
    from pipeline.ablate.report import report
    from pipeline.ablate.run import run_ablation

    if args.action == "report":
        print(f"report -> {report(args.config, args.preset)}")
        return 0
    run_ablation(args.config, args.preset, args.target, args.seeds, args.resume, args.dry_run)  # prints as it goes
    if not args.dry_run:
        print(f"report -> {report(args.config, args.preset)}")
    return 0


def sweep(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from pipeline.sweeps import report, run_sweep

    if args.action == "report":
        source = args.source or args.config
        if not source:
            raise ConfigError("nodd sweep report needs the sweep's --config or its run root")
        print(f"report -> {report(source)}")
        return 0
    if not args.config:
        raise ConfigError("nodd sweep needs --config configs/sweep/<name>.toml")
    print(run_sweep(args.config, args.target, args.dry_run))
    return 0


HANDLERS = {"submit": submit, "jobs": jobs, "sweep": sweep, "ablate": ablate}

"""The local target (detached torchrun, followed and cancelled through `nodd jobs`) and sweeps:
grid expansion, validity checks before submission, and the report from real run directories."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cluster.sweep import SweepSpec, expand
from pipeline.cli import main
from pipeline.jobs import wait_for
from support.cluster_helpers import newest_job_id, write_train_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_local_two_process_job_runs_then_a_long_one_is_cancelled(shards, tmp_path, capsys):
    assert main(["submit", "--target", "local", "--job", str(write_train_job(tmp_path, shards["kl"], "short", 3))]) == 0
    short = newest_job_id()
    assert wait_for(short, 240).state == "COMPLETED"
    assert main(["jobs", "logs", short]) == 0
    assert "step 3/3" in capsys.readouterr().out
    assert len((tmp_path / "short" / "metrics.jsonl").read_text().splitlines()) == 3
    assert main(["submit", "--target", "local", "--job", str(write_train_job(tmp_path, shards["kl"], "long", 10**6))]) == 0
    long = newest_job_id()
    deadline = time.time() + 240
    while not (tmp_path / "long" / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.2)
    assert main(["jobs", "cancel", long]) == 0
    assert wait_for(long, 120).state == "CANCELLED"
    assert any((tmp_path / "long" / "checkpoints").glob("step-*")), "cancel should leave a checkpoint"


def test_grid_expands_with_job_and_config_keys():
    sweep = SweepSpec(name="s", job="j.toml", grid={"model.width": [64, 128], "job.nodes": [1, 2]}, run_root="/r")
    points = expand(sweep)
    assert [p.name for p in points] == ["s-000", "s-001", "s-002", "s-003"]
    assert points[3].params == {"model.width": 128, "job.nodes": 2}
    assert "nodes=2" in points[3].job_overrides and points[3].config_overrides == ["model.width=128"]
    assert points[3].run_dir == "/r/s-003"


def test_sweep_skips_invalid_combinations_and_reports_real_runs(shards, tmp_path, capsys):
    sweep = tmp_path / "sweep.toml"
    root = tmp_path / "sweeps"
    job = write_train_job(tmp_path, shards["kl"], "base", steps=3, procs=1)
    sweep.write_text(f"""
name = "tiny"
job = "{job}"
target = "local"
run_root = "{root}"
[grid]
"model.width" = [32, 48]
"parallel.tp" = [1, 2]
""")
    assert main(["sweep", "--config", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would submit") == 2 and out.count("skipped") == 2 and "world size 1" in out
    assert not root.exists()
    assert main(["sweep", "--config", str(sweep)]) == 0
    plan = json.loads((root / "sweep.json").read_text())
    for entry in plan["jobs"]:
        if "job" in entry:
            assert wait_for(entry["job"], 240).state == "COMPLETED"
    assert main(["sweep", "report", str(root)]) == 0
    report = (root / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| tiny-")]
    assert len(rows) == 4 and sum("| ran |" in r for r in rows) == 2 and sum("invalid" in r for r in rows) == 2
    assert (root / "report.png").stat().st_size > 1000


def test_the_shipped_sweep_plans_six_valid_jobs_and_skips_two(capsys):
    assert main(["sweep", "--config", str(ROOT / "configs/sweep/shapes_scaling.toml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("would submit") == 6 and out.count("skipped") == 2, out

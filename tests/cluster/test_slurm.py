"""A real Slurm (started by the suite): prep and 2-process training jobs through `nodd submit`,
followed with `nodd jobs`, cancelled, and pre-empted then requeued without losing a step."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.jobs import job_status, wait_for
from support.cluster_helpers import newest_job_id, write_prep_job, write_train_job
from support.polling import wait_until
from support.slurm_cluster import SlurmCluster, unavailable
from support.train_helpers import losses

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm():
    why = unavailable()
    if why:
        pytest.skip(why)
    cluster = SlurmCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm_env(slurm, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    return slurm


def submit(job: Path, *extra: str) -> str:
    assert main(["submit", "--target", "slurm", "--job", str(job), *extra]) == 0
    return newest_job_id()


def diagnose(cluster: SlurmCluster, slurm_id: str, status, run: Path) -> str:
    job = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True).stdout
    logs = "".join(p.read_text()[-3000:] for p in (run / "logs").glob("*.out"))
    ctld = (cluster.dir / "log" / "slurmctld.log").read_text()[-3000:]
    return f"{status}\n--- scontrol\n{job}\n--- job log\n{logs}\n--- slurmctld\n{ctld}"


def node_state() -> str:
    done = subprocess.run(["scontrol", "show", "node", "localhost"], capture_output=True, text=True)
    return next((w for w in done.stdout.split() if w.startswith("State=")), "State=?")


def logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_training_runs_and_a_preempted_job_requeues_to_the_same_result(slurm_env, shards, tmp_path, capsys):
    plain = submit(write_train_job(tmp_path, shards["kl"], "plain", steps=30))
    job = submit(write_train_job(tmp_path, shards["kl"], "preempted", steps=30))
    run = tmp_path / "preempted"
    wait_until(lambda: logged_steps(run) >= 3, 240, "the training to log 3 steps")
    slurm_id = job.split("-")[1]
    subprocess.run(["scancel", "--signal=USR1", "--batch", slurm_id], check=True)  # what pre-emption sends
    # Slurm holds a requeued job back for a while (BeginTime), so the node can finish cleaning up
    # its last run; once it has (no COMPLETING flag), let the job start again at once
    wait_until(lambda: job_status(job)[1].state == "PENDING", 180, "the job to requeue")
    wait_until(lambda: "COMPLETING" not in node_state(), 120, "the node to finish the first run")
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=True)
    assert wait_for(plain, 300).state == "COMPLETED"
    status = wait_for(job, 300)
    assert status.state == "COMPLETED", diagnose(slurm_env, slurm_id, status, run)
    assert main(["jobs", "logs", job]) == 0
    log = capsys.readouterr().out
    assert "requeueing job" in log and "(restart 1)" in log, log[-3000:]
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved[-1] == "step-000030" and len(saved) == 2  # the pre-emption checkpoint, then the last
    assert losses(run) == losses(tmp_path / "plain")  # no step lost or repeated differently
    assert (run / "job" / "config.toml").is_file() and "nodd" in json.loads((run / "job" / "code_version.json").read_text())


def test_cancel_stops_a_running_job_after_a_checkpoint(slurm_env, shards, tmp_path):
    job = submit(write_train_job(tmp_path, shards["kl"], "long", steps=100000))
    wait_until(lambda: logged_steps(tmp_path / "long") >= 2, 240, "the training to start")
    assert main(["jobs", "cancel", job]) == 0
    status = wait_for(job, 180)
    assert status.state == "CANCELLED", status
    assert any((tmp_path / "long" / "checkpoints").glob("step-*")), "SIGTERM from scancel should checkpoint"


def test_prep_job_runs_against_a_ray_cluster_inside_the_allocation(slurm_env, tiny_tokenizers, tmp_path):
    out = tmp_path / "shards"
    spec = write_prep_job(tmp_path, tiny_tokenizers["kl"], "prep", 64)
    job = submit(spec)
    status = wait_for(job, 300)
    assert main(["jobs", "logs", job]) == 0
    assert status.state == "COMPLETED", status
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 64


@pytest.mark.parametrize("engine, layout", [
    ("megatron", ["parallel.tp=2", "parallel.dp_shard=1"]),  # megatron's tensor parallelism
    ("deepspeed", ["parallel.pp=2", "parallel.dp_shard=1", "deepspeed.zero_stage=1", "optim.grad_accum=2"]),
])
def test_an_engine_job_trains_through_submit(slurm_env, shards, tmp_path, engine, layout):
    spec = write_train_job(tmp_path, shards["kl"], engine, steps=4, overrides=[f"train.engine={engine}", *layout])
    job = submit(spec)
    status = wait_for(job, 300)
    run = tmp_path / engine
    assert status.state == "COMPLETED", diagnose(slurm_env, job.split("-")[1], status, run)
    meta = json.loads((run / "checkpoints" / "step-000004" / "meta.json").read_text())
    degrees = {setting.split("=")[0].removeprefix("parallel."): int(setting.split("=")[1])
               for setting in layout if setting.startswith("parallel.")}
    assert meta["engine"] == engine and logged_steps(run) == 4
    assert all(meta["parallel"][k] == v for k, v in degrees.items()), meta["parallel"]


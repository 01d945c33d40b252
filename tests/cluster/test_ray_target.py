"""A real local Ray cluster (`ray start --head`, in the suite's loopback namespace) receives a prep
job through `nodd submit --target ray`; an unreachable cluster is a clear error."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.cluster_helpers import newest_job_id, write_prep_job

from core.errors import ClusterError
from pipeline.cli import main
from pipeline.jobs import wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` as our own child: terminating it stops exactly this cluster
    (never `ray stop`, which would kill every Ray on the machine)."""
    gcs, dashboard = free_port(), free_port()
    temp = tmp_path_factory.mktemp("ray_head")
    proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                             f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
                             "--node-ip-address=127.0.0.1", "--num-cpus=4", f"--temp-dir={temp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # it answers (401 before the token is sent): it is up
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("ray start --head exited early")
            time.sleep(0.5)
    else:
        proc.send_signal(signal.SIGTERM)
        pytest.fail("the Ray dashboard did not come up in 120 s")
    yield address
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
@pytest.mark.ray
def test_prep_job_submitted_to_a_running_ray_cluster(ray_head, tiny_tokenizers, tmp_path, capsys):
    out = tmp_path / "shards"
    spec = write_prep_job(tmp_path, tiny_tokenizers["kl"], "ray-prep", 48, f'[ray]\naddress = "{ray_head}"')
    assert main(["submit", "--target", "ray", "--job", str(spec)]) == 0
    job = newest_job_id()
    status = wait_for(job, 300)
    assert main(["jobs", "logs", job]) == 0
    logs = capsys.readouterr().out
    assert status.state == "COMPLETED", (status, logs[-3000:])
    assert "48 samples" in logs
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 48
    assert main(["jobs", "list"]) == 0
    assert f"{job}" in capsys.readouterr().out


def test_unreachable_ray_cluster_is_a_clear_error(tmp_path):
    from pipeline.jobs import load_job, submit

    spec = load_job(str(ROOT / "configs/cluster/shapes_prep.toml"),
                    [f"run_dir={json.dumps(str(tmp_path / 'run'))}", f'ray.address="http://127.0.0.1:{free_port()}"'], [])
    with pytest.raises(ClusterError, match="cannot reach the Ray dashboard"):
        submit(spec, "ray")

"""Prep against an existing Ray cluster (`ray.address=host:port`), started here with `ray start
--head` inside the test's loopback namespace; and a clear error for an address nobody answers."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_prep.shards import verify_shards

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prep(*args, timeout=300):
    return subprocess.run([str(BIN / "nodd"), "prep", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


@pytest.fixture
def ray_head():
    port = free_port()
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=4",
                             "--include-dashboard=false", "--disable-usage-stats", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(2)  # the GCS answers before the raylet has registered
    yield f"127.0.0.1:{port}"
    os.killpg(head.pid, signal.SIGTERM)  # only the head we started, never `ray stop`
    head.wait(timeout=60)


def test_prep_on_existing_cluster(tmp_path, tiny_tokenizers, ray_head):
    out = tmp_path / "shards"
    result = prep(f"out_dir={out}", f"tokenizer.path={tiny_tokenizers['kl']}", "source.limit=200", "shard_size=50",
                  f"ray.address={ray_head}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "200 samples in 4 shards" in result.stdout
    assert verify_shards(out) == []


def test_unreachable_cluster_is_a_clear_error(tmp_path, tiny_tokenizers):
    started = time.monotonic()
    result = prep(f"out_dir={tmp_path / 'o'}", f"tokenizer.path={tiny_tokenizers['kl']}", "source.limit=10",
                  f"ray.address=127.0.0.1:{free_port()}", timeout=120)
    assert result.returncode == 1 and "no Ray cluster answers at ray.address" in result.stderr
    assert "Traceback" not in result.stderr and time.monotonic() - started < 60

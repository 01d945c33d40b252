"""`nodd train --nproc N` leaves no orphans: when the launcher dies, even by `kill -9` of its
whole process group, the torchrun workers (each in a session of its own) go too."""

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from support.polling import wait_until

ROOT = Path(__file__).resolve().parents[3]


def processes_mentioning(text: str) -> dict[int, str]:
    """pid -> command line of every live process whose command line contains `text`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        if text in cmdline:  # a zombie's command line is empty: only live processes match
            found[int(entry.name)] = cmdline
    return found


LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")


@LINUX_ONLY
def test_a_parent_that_died_before_the_tie_is_noticed_at_once():
    def tie(parent: str) -> subprocess.CompletedProcess:
        code = (f"import os, signal; from pipeline.train.launch import die_with_parent; "
                f"die_with_parent(signal.SIGTERM, {parent}); print('alive')")
        return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              capture_output=True, text=True, timeout=60, check=False)

    alive = tie("os.getppid()")
    assert alive.returncode == 0 and alive.stdout == "alive\n", alive.stderr
    orphan = tie("os.getpid()")  # a parent that is not ours: as if it died and we were reparented
    assert orphan.returncode == -signal.SIGTERM and orphan.stdout == ""


@LINUX_ONLY
@pytest.mark.slow
@pytest.mark.parametrize("kill", ["process group", "launcher"])
def test_killing_the_launcher_leaves_no_worker_behind(tmp_path, shards, kill):
    run = tmp_path / f"orphans-{uuid.uuid4().hex}"  # unique: finds this run's processes by command line
    log = (tmp_path / "launcher.log").open("w")
    command = [sys.executable, "-m", "pipeline.cli", "train", "--nproc", "2", f"run_dir={run}",
               f"data.shards={shards['kl']}", "data.seq_len=256", "data.batch_rows=2", "model.width=32",
               "model.depth=2", "model.heads=4", "train.log_every=1", "train.checkpoint_every=100000",
               "train.steps=100000"]
    # a session of its own: its process group is the launcher and the torchrun agent, as in a shell
    launcher = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def training() -> bool:
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
            metrics = run / "metrics.jsonl"  # a logged step: the workers are past their set-up
            return metrics.exists() and metrics.stat().st_size > 0

        wait_until(training, 240, "the first training step")
        workers = {pid for pid, cmd in processes_mentioning(str(run)).items()
                   if pid != launcher.pid and "--nproc-per-node" not in cmd}  # not the launcher or agent
        assert len(workers) == 2, processes_mentioning(str(run))

        if kill == "process group":  # kills the launcher and the torchrun agent at once
            os.killpg(launcher.pid, signal.SIGKILL)
        else:  # the agent outlives the launcher and must stop its workers
            os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        wait_until(lambda: not processes_mentioning(str(run)), 60, "the workers and the agent to exit")
        if kill == "launcher":  # the agent lived to stop its workers gracefully: they saved a checkpoint
            text = (tmp_path / "launcher.log").read_text()
            assert list((run / "checkpoints").glob("step-*")), text[-3000:]
            # one SIGTERM for the agent, though each launcher thread's exit sends the death signal
            assert text.count("death signal, shutting down workers") == 1, text[-3000:]
    finally:
        for pid in processes_mentioning(str(run)):  # survivors of a failed test, by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()

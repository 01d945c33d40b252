"""A real one-node Slurm (munged, slurmctld, slurmd from Debian's slurm-wlm and munge) started
by the test suite in its loopback-only network namespace; the comments below say why each
setting is there. Needs root, the binaries, and a private network namespace (`make test`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
ENABLE = ("install Debian's slurm-wlm and munge (`apt-get install -y slurm-wlm munge`, as .ci/run does) "
          "and run the suite as root inside a loopback-only network namespace (`make test`)")


def unavailable() -> str | None:
    """Why a real Slurm cannot start here, or None."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"Slurm tests need {', '.join(missing)}: {ENABLE}"
    if os.geteuid() != 0:
        return f"Slurm tests run the daemons as root: {ENABLE}"
    if {name for _, name in socket.if_nameindex()} - {"lo"}:  # this namespace's interfaces (/sys may show the host's)
        return f"Slurm tests start daemons only inside a private network namespace: {ENABLE}"
    return None


class SlurmCluster:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="nodd-slurm-"))
        self.conf = self.dir / "slurm.conf"
        self.pid_files: list[Path] = []
        self.pids: list[int] = []

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> "SlurmCluster":
        d = self.dir
        for sub in ("munge", "spool", "state", "log", "run"):
            (d / sub).mkdir()
        os.chmod(d, 0o755)
        os.chmod(d / "munge", 0o755)
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        munge_socket = d / "munge" / "munge.socket.2"
        # glibc's AI_ADDRCONFIG ignores 127.0.0.1 unless lo holds another address: slurmctld
        # would die in getaddrinfo
        subprocess.run(["ip", "addr", "add", "127.0.0.2/32", "dev", "lo"], capture_output=True)
        subprocess.run(["munged", "--key-file", str(key), "--socket", str(munge_socket), "--pid-file",
                        str(d / "run/munged.pid"), "--log-file", str(d / "log/munged.log"), "--seed-file",
                        str(d / "munge/seed"), "--force"], check=True, capture_output=True)
        self.pid_files.append(d / "run/munged.pid")
        cpus = os.cpu_count() or 2
        self.conf.write_text("\n".join([
            "ClusterName=nodd-test", "SlurmctldHost=localhost", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}", "SlurmUser=root", "SlurmdUser=root",
            f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool",
            f"SlurmctldPidFile={d}/run/slurmctld.pid", f"SlurmdPidFile={d}/run/slurmd.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log", f"SlurmdLogFile={d}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={d}/log/jobcomp.txt", "MailProg=/bin/true", "ReturnToService=2", "MinJobAge=3600",
            "JobRequeue=1", "KillWait=60", "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            f"NodeName=localhost CPUs={cpus} RealMemory=16000 State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
        ]) + "\n")
        env = dict(os.environ, **self.env)
        subprocess.run(["slurmctld"], env=env, check=True, capture_output=True)
        self.pid_files.append(d / "run/slurmctld.pid")
        subprocess.run(["slurmd", "-N", "localhost"], env=env, check=True, capture_output=True)
        self.pid_files.append(d / "run/slurmd.pid")
        deadline = time.time() + 30
        while time.time() < deadline:
            done = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            if done.stdout.strip() in ("idle", "mixed", "allocated"):
                self.pids = [int(p.read_text().strip()) for p in self.pid_files if p.is_file()]
                return self
            time.sleep(0.3)
        raise RuntimeError(f"Slurm did not come up: {(d / 'log/slurmctld.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Cancel every job of this cluster, then SIGTERM the daemons it started (by pid, never
        by name) and SIGKILL stragglers."""
        env = dict(os.environ, **self.env)
        subprocess.run(["scancel", "--user=root", "--full"], env=env, capture_output=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            done = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if done.returncode != 0 or not done.stdout.strip():
                break
            time.sleep(0.5)
        for pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in self.pids):
            time.sleep(0.2)
        for pid in self.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if os.environ.get("NODD_KEEP_SLURM"):  # keep the daemons' logs to debug a failure
            print(f"Slurm logs kept in {self.dir / 'log'}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False

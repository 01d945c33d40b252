"""Rendered sbatch scripts and Kubernetes manifests: golden files, a multi-node layout whose
ranks and rendezvous agree, the manifests through the official client models, and hostile input
that must be quoted or refused, never run."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.targets import get_target
from core.errors import ClusterError, ConfigError
from pipeline.jobs import load_job, prepare, submit

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
CASES = [("slurm", "shapes_train"), ("slurm", "shapes_prep"), ("slurm", "h200_4x8"),
         ("k8s", "shapes_train"), ("k8s", "shapes_prep"), ("k8s", "h200_4x8")]


def rendered(target: str, job_name: str, *overrides: str) -> tuple:
    """Render a configs/cluster/ job with machine-independent paths."""
    spec = load_job(str(ROOT / f"configs/cluster/{job_name}.toml"),
                    [f'run_dir="/runs/{job_name}"', 'python="/opt/venv/bin/python"',
                     *([] if target != "k8s" else ['container_image="registry.example.com/nodd:gpu"']), *overrides], [])
    job = prepare(spec, target)
    job.workdir = Path("/srv/submit")
    return job, get_target(target).render(job)


@pytest.mark.parametrize("target, job_name", CASES)
def test_rendered_files_match_the_golden_files(target, job_name):
    _, files = rendered(target, job_name)
    for name, text in files.items():
        golden = GOLDEN / f"{target}-{job_name}-{name}"
        if os.environ.get("NODD_UPDATE_GOLDEN"):
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(text)
        assert golden.is_file(), f"no golden file {golden}; render it with NODD_UPDATE_GOLDEN=1"
        assert text == golden.read_text(), f"{golden} differs (NODD_UPDATE_GOLDEN=1 rewrites it after review)"


def fake_slurm_tools(folder: Path, nodes: list[str]) -> dict[str, str]:
    """`scontrol` and `srun` stand-ins that record what the script asks of them."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = {
        "scontrol": f"#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf '%s\\n' {' '.join(nodes)}\n"
                    "echo \"$@\" >> \"$FAKE_LOG.scontrol\"\n",
        "srun": "#!/bin/sh\nenv > \"$FAKE_LOG.env\"\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done > \"$FAKE_LOG.srun\"\n",
    }
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}:{os.environ['PATH']}", "FAKE_LOG": str(folder / "log")}


def run_script(text: str, tmp_path: Path, job_id: int, nodes: list[str]) -> tuple[list[str], dict]:
    script = tmp_path / "sbatch.sh"
    script.write_text(text)
    env = {**os.environ, **fake_slurm_tools(tmp_path / "bin", nodes), "SLURM_JOB_ID": str(job_id),
           "SLURM_JOB_NODELIST": ",".join(nodes), "SLURM_JOB_NUM_NODES": str(len(nodes))}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "bin" / "log.srun").read_text().splitlines()
    srun_env = dict(line.split("=", 1) for line in (tmp_path / "bin" / "log.env").read_text().splitlines()
                    if "=" in line)
    return argv, srun_env


def test_four_nodes_of_eight_gpus_agree_on_ranks_and_rendezvous(tmp_path):
    job, files = rendered("slurm", "h200_4x8")
    nodes = ["gpu-a1", "gpu-a2", "gpu-a3", "gpu-a4"]
    argv, env = run_script(files["sbatch.sh"].replace("/srv/submit", str(tmp_path)), tmp_path, 4242, nodes)
    port = 20000 + 4242 % 20000
    assert "--nodes=4" in argv and "--ntasks-per-node=1" in argv  # one torchrun per node
    assert {"--nnodes=4", "--nproc-per-node=8", "--rdzv-backend=c10d", f"--rdzv-endpoint=gpu-a1:{port}",
            "--rdzv-id=4242"} <= set(argv)
    assert env["MASTER_ADDR"] == "gpu-a1" and env["MASTER_PORT"] == str(port)
    config = job.config_text
    world = 4 * 8
    degrees = {k: int(v) for k, v in (line.split(" = ") for line in config.splitlines()
                                      if line.split(" = ")[0] in ("tp", "pp", "dp_shard", "dp_replicate"))}
    assert degrees["tp"] * degrees["pp"] * degrees["dp_shard"] * degrees["dp_replicate"] == world
    manifests = list(yaml.safe_load_all(rendered("k8s", "h200_4x8")[1]["manifests.yaml"]))
    replicas = manifests[1]["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] + replicas["Worker"]["replicas"] == 4
    assert manifests[1]["spec"]["nprocPerNode"] == "8"
    assert replicas["Worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"


def test_parallel_degrees_that_do_not_fit_the_job_are_refused_before_submission():
    with pytest.raises(ConfigError, match="do not match the world size 16"):
        rendered("slurm", "h200_4x8", "nodes=2")


def test_manifests_pass_the_kubernetes_models_and_broken_ones_do_not():
    from cluster.targets.k8s import validate

    for job_name in ("shapes_train", "shapes_prep", "h200_4x8"):
        validate(list(yaml.safe_load_all(rendered("k8s", job_name)[1]["manifests.yaml"])))
    docs = list(yaml.safe_load_all(rendered("k8s", "shapes_train")[1]["manifests.yaml"]))
    docs[1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0].pop("name")
    with pytest.raises(ClusterError, match="not a valid V1PodTemplateSpec"):
        validate(docs)
    docs = list(yaml.safe_load_all(rendered("k8s", "shapes_train")[1]["manifests.yaml"]))
    docs[0]["data"] = ["not", "a", "map"]
    with pytest.raises(ClusterError, match="V1ConfigMap"):
        validate(docs)


HOSTILE = "$(touch PWNED); `touch PWNED2`; echo 'it''s' \"q\" \\ ;"


def test_hostile_values_are_quoted_and_never_run(tmp_path):
    _, files = rendered("slurm", "shapes_train", f"env.EVIL={json.dumps(HOSTILE)}",
                        f"python={json.dumps('/opt/my venv/bin/python')}")
    argv, env = run_script(files["sbatch.sh"].replace("/srv/submit", str(tmp_path)), tmp_path, 7, ["n1"])
    assert env["EVIL"] == HOSTILE  # arrived as the literal text
    assert not list(tmp_path.rglob("PWNED*"))
    assert "/opt/my venv/bin/python" in argv  # one argument, spaces and all


@pytest.mark.parametrize("override, message", [
    ('name="my job"', "job name"),
    ('name="x;rm"', "job name"),
    ('name="$(id)"', "job name"),
    ('env.A="line\\nbreak"', "control character"),
    ('overrides=["train.steps=1\\nrm -rf /"]', "control character"),
    ('time_limit="1 hour"', "time_limit"),
    ('slurm.extra=["--comment=$(id)"]', "shell characters"),
    ('run_dir="/runs/with space"', "cannot hold spaces"),
])
def test_bad_job_specs_are_refused_with_the_field_named(override, message):
    with pytest.raises(ConfigError, match=message):
        spec = load_job(str(ROOT / "configs/cluster/shapes_train.toml"), [override], [])
        get_target("slurm").render(prepare(spec, "slurm"))


def test_a_config_override_with_shell_syntax_stays_data(tmp_path):
    spec = load_job(str(ROOT / "configs/cluster/shapes_train.toml"), [f'run_dir="{tmp_path / "r"}"'],
                    ['data.shards="/data/$(touch PWNED); x"'])
    job = prepare(spec, "local")
    assert 'shards = "/data/$(touch PWNED); x"' in job.config_text
    assert "PWNED" not in get_target("local").render(job)["command.sh"]  # the job reads it from its config file
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        prepare(load_job(str(ROOT / "configs/cluster/shapes_train.toml"), [], ["train.steps=5; rm -rf /"]), "local")


def test_missing_scheduler_tools_and_unknown_jobs_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no kubectl
    spec = load_job(str(ROOT / "configs/cluster/shapes_train.toml"), [f'run_dir="{tmp_path / "r"}"'], [])
    with pytest.raises(ClusterError, match="sbatch is not installed"):
        submit(spec, "slurm")
    spec = load_job(str(ROOT / "configs/cluster/shapes_train.toml"),
                    [f'run_dir="{tmp_path / "k"}"', 'container_image="nodd:gpu"', "k8s.apply=true"], [])
    with pytest.raises(ClusterError, match="kubectl is not installed"):
        submit(spec, "k8s")
    from pipeline.jobs import job_status

    with pytest.raises(ClusterError, match="no submitted job 'slurm-999'"):
        job_status("slurm-999")


def test_dry_run_prints_everything_and_writes_nothing(tmp_path, capsys):
    from pipeline.cli import main

    run = tmp_path / "dry"
    assert main(["submit", "--target", "slurm", "--job", str(ROOT / "configs/cluster/shapes_train.toml"),
                 "--dry-run", f"run_dir={json.dumps(str(run))}", "--set", "train.steps=7"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --job-name=shapes-train" in out and "steps = 7" in out and "sbatch --parsable" in out
    assert not run.exists()


def test_cluster_never_imports_torch_model_or_ray():
    import sys

    code = ("import sys, cluster.spec, cluster.job, cluster.records, cluster.sweep, cluster.local_runner\n"
            "from cluster.targets import local, slurm, ray_jobs, k8s\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'model', 'ray'})\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_k8s_apply_status_logs_and_cancel_go_through_kubectl(tmp_path, monkeypatch, capsys):
    """No cluster here: a stand-in kubectl records its arguments and answers like the real one."""
    from pipeline.cli import main

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    status = json.dumps({"status": {"conditions": [{"type": "Created", "status": "True"},
                                                   {"type": "Running", "status": "True"}]}})
    kubectl.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/calls\n"
                       f"case \"$*\" in *' get '*) echo '{status}';; *' logs '*) echo 'pod-0 step 1';; esac\n")
    kubectl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert main(["submit", "--target", "k8s", "--job", str(ROOT / "configs/cluster/shapes_train.toml"),
                 f"run_dir={json.dumps(str(tmp_path / 'run'))}", 'container_image="nodd:cpu"', "k8s.apply=true",
                 'k8s.context="lab"']) == 0
    assert main(["jobs", "status", "k8s-shapes-train"]) == 0
    assert main(["jobs", "logs", "k8s-shapes-train"]) == 0
    assert main(["jobs", "cancel", "k8s-shapes-train"]) == 0
    out = capsys.readouterr().out
    assert "k8s-shapes-train RUNNING Running" in out and "pod-0 step 1" in out
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"--context lab apply -f {tmp_path / 'run' / 'job' / 'manifests.yaml'}"
    assert calls[1] == "--context lab get PyTorchJob shapes-train -n default -o json"
    assert calls[-1] == "--context lab delete PyTorchJob shapes-train -n default"

"""`nodd train`: it learns, resumes exactly, runs on several processes, refuses bad setups."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.train_helpers import config, losses

from core.errors import ConfigError
from pipeline.cli import main
from pipeline.train.loop import train

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("prefetch", [0, 2])  # packing in the step, or 2 steps ahead in a thread
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, shards, prefetch):
    full = tmp_path / "full"
    train(config(full, shards["kl"]))  # CPU default: packing in the step
    part = tmp_path / "part"
    train(config(part, shards["kl"], train__steps=3, data__prefetch=prefetch))
    result = train(config(part, shards["kl"], data__prefetch=prefetch), resume=True)
    assert result["step"] == 6
    assert losses(part) == losses(full)
    ckpts = sorted(p.name for p in (part / "checkpoints").iterdir())
    assert ckpts == ["step-000003", "step-000006"]


def test_interrupted_save_is_never_loaded_and_existing_runs_need_resume(tmp_path, shards):
    run = tmp_path / "run"
    train(config(run, shards["kl"], train__steps=3))
    partial = run / "checkpoints" / "step-000004.tmp"
    partial.mkdir()
    (partial / "garbage").write_text("half a save")
    with pytest.raises(ConfigError, match="--resume"):
        train(config(run, shards["kl"]))
    result = train(config(run, shards["kl"], train__steps=4), resume=True)
    assert result["step"] == 4 and not partial.exists()


def test_model_learns_the_shapes(tmp_path, shards):
    cfg = config(tmp_path / "learn", shards["kl"], train__steps=40, optim__lr=3e-3)
    train(cfg)
    curve = losses(tmp_path / "learn")
    assert curve[40] < 0.7 * curve[1], curve


def test_bad_setups_fail_before_any_step(tmp_path, shards, tiny_tokenizers):
    with pytest.raises(ConfigError, match="do not match the world size"):
        train(config(tmp_path / "a", shards["kl"], parallel__dp_shard=2))
    code = main(["train", f"run_dir={tmp_path / 'b'}", f"data.shards={shards['kl']}",
                 f"data.tokenizer={tiny_tokenizers['fsq']}", "train.steps=1"])
    assert code == 1 and not (tmp_path / "b" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_two_processes_fsdp_then_resume(tmp_path, shards):
    run = tmp_path / "dp2"
    base = [sys.executable, "-m", "pipeline.cli", "train", "--nproc", "2", f"run_dir={run}",
            f"data.shards={shards['kl']}", "data.seq_len=256", "data.batch_rows=2", "model.width=32", "model.depth=2",
            "model.heads=4", "train.log_every=1", "train.checkpoint_every=2",
            "optim.ema_decay=0.9"]  # the weight average as FSDP shards, saved and resumed
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(base + ["train.steps=2"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    done = subprocess.run(base + ["train.steps=4", "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    curve = losses(run)
    assert sorted(curve) == [1, 2, 3, 4]
    saved = json.loads((run / "checkpoints" / "step-000004" / "meta.json").read_text())
    assert saved["world"] == 2 and saved["parallel"]["dp_shard"] == 2
    assert json.loads((run / "checkpoints" / "step-000004" / "export" / "model.json").read_text())["ema_decay"] == 0.9


@pytest.mark.slow
def test_pipeline_stages_match_one_process_then_resume_as_fsdp(tmp_path, shards):
    one = tmp_path / "one"
    train(config(one, shards["kl"], optim__grad_accum=2, train__steps=2))
    run = tmp_path / "pp2"
    base = [sys.executable, "-m", "pipeline.cli", "train", "--nproc", "2", f"run_dir={run}",
            f"data.shards={shards['kl']}", "data.seq_len=256", "data.batch_rows=2", "model.width=32", "model.depth=2",
            "model.heads=4", "model.latent_size=8", "model.attention=sdpa", "optim.warmup_steps=2",
            "optim.grad_accum=2", "train.log_every=1", "optim.ema_decay=0.9"]  # per stage, resharded to FSDP
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(base + ["parallel.pp=2", "parallel.dp_shard=1", "train.steps=2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = losses(one)
    got = losses(run)
    assert got.keys() == expected.keys() and all(abs(got[k] - expected[k]) < 1e-4 for k in got), (got, expected)
    # DCP reshards the two stages' checkpoint into one FSDP layout (the data restarts at the next epoch)
    done = subprocess.run(base + ["parallel.dp_shard=2", "train.steps=3", "--resume"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(losses(run)) == [1, 2, 3]


def test_activation_checkpointing_changes_memory_not_losses_and_metrics_are_written(tmp_path, shards):
    train(config(tmp_path / "plain", shards["kl"], train__steps=3))
    train(config(tmp_path / "ac", shards["kl"], train__steps=3, train__activation_checkpointing="true"))
    plain, ac = losses(tmp_path / "plain"), losses(tmp_path / "ac")
    assert all(abs(plain[k] - ac[k]) < 1e-5 for k in plain), (plain, ac)
    record = json.loads((tmp_path / "ac" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < record["mfu"] < 1.5 and record["memory_gib"] > 0 and record["tokens_per_s"] > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "ac" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_losses(tmp_path, shards):
    import signal
    import time

    def command(run, *extra):
        return [sys.executable, "-m", "pipeline.cli", "train", f"run_dir={run}", f"data.shards={shards['kl']}",
                "data.seq_len=256", "data.batch_rows=2", "model.width=32", "model.depth=2", "model.heads=4",
                "train.log_every=1", "train.checkpoint_every=2", "train.steps=10", *extra]

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    full = tmp_path / "full"
    subprocess.run(command(full), env=env, check=True, capture_output=True, timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen(command(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(losses(run)) < 10, "the run finished before it could be killed"
    done = subprocess.run(command(run, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert losses(run) == losses(full)  # steps redone after the last checkpoint log the same losses


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, shards):
    import signal
    import time

    run = tmp_path / "preempted"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", f"run_dir={run}", f"data.shards={shards['kl']}",
           "data.seq_len=256", "data.batch_rows=2", "model.width=32", "model.depth=2", "model.heads=4",
           "train.log_every=1", "train.checkpoint_every=1000", "train.steps=1000"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not ((run / "metrics.jsonl").exists()
                                          and len((run / "metrics.jsonl").read_text().splitlines()) >= 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    saved = sorted((run / "checkpoints").iterdir())
    assert len(saved) == 1 and 3 <= int(saved[0].name.split("-")[1]) < 1000


def test_nproc_relaunches_the_same_command_under_torchrun(monkeypatch):
    captured = {}
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr("pipeline.train.launch.subprocess.call",
                        lambda cmd, env: captured.update(cmd=cmd, env=env) or 0)
    assert main(["train", "--nproc", "2", "run_dir=somewhere", "train.steps=1", "--resume"]) == 0
    cmd = captured["cmd"]
    assert "--nproc-per-node=2" in cmd and cmd[-5:] == ["pipeline.cli", "train", "run_dir=somewhere",
                                                          "train.steps=1", "--resume"]
    assert captured["env"]["MASTER_ADDR"] == "127.0.0.1"


def test_flop_accounting_counts_each_tokens_whole_document():
    from types import SimpleNamespace

    import torch

    from pipeline.train.metrics import flops_per_token, mean_context

    # row 0: documents of 3 and 1 tokens and a padding token; row 1: one document of 2 tokens
    batch = SimpleNamespace(segment_ids=torch.tensor([[1, 1, 1, 2, 0], [1, 1, 0, 0, 0]]))
    assert mean_context(batch) == (3 * 3 + 1 * 1 + 2 * 2) / 6
    assert flops_per_token(100, depth=2, width=8, context=4.0) == 6 * 100 + 12 * 2 * 8 * 4


def test_flop_counter_counts_each_part_on_its_own_tokens():
    """The backbone on every token, the LM head where a target is, the adapters on image tokens,
    MAR's head on its tokens x diffusion_batch_mul: equal-compute ablations rest on this."""
    from model.batch import IGNORE
    from pipeline.train.metrics import FlopCounter, matmul_params, mean_context
    from support.model_helpers import documents, packer, tiny_config, tiny_model

    for overrides in ({"mode": "transfusion"}, {"mode": "mar"}, {"mode": "mar", "var_scales": [1, 2, 4]},
                      {"mode": "discrete"}):
        cfg = tiny_config(**overrides)
        model, batch = tiny_model(cfg), packer(cfg).pack(documents(cfg))
        count = FlopCounter(cfg)
        assert count.backbone == matmul_params(model.backbone)
        assert count.backbone + count.lm_head + count.latent + count.head == matmul_params(model)
        images = int(batch.latent_mask.sum())
        head_tokens = {"transfusion": 0, "discrete": 0}.get(cfg.mode, 2 * 16)  # two generated 4x4 images
        if cfg.next_scale_images:
            head_tokens = 2 * 21
        assert count.head_tokens(batch) == head_tokens
        expected = 6 * (count.backbone * batch.num_tokens + count.lm_head * int((batch.targets != IGNORE).sum())
                        + count.latent * images + count.head * head_tokens * cfg.diffusion_batch_mul) \
            + 12 * cfg.depth * cfg.width * mean_context(batch) * batch.num_tokens
        assert count(batch) == expected

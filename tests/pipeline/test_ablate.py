"""`nodd ablate`: the spec, the report's statistics and claims, and the whole grid end to end on a
tiny one (two tokenizers, three arms, two seeds, the local target)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from pipeline.ablate.report import claims, differs
from pipeline.ablate.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]


def write_spec(tmp_path: Path, extra: str = "") -> Path:
    """A tiny grid: KL and FSQ tokenizers of a few steps on 64 images, transfusion, next-scale
    continuous and next-scale discrete arms, 2 seeds, a 6-step budget, a very small evaluation."""
    tiny_tok = '["net.channels=16", "source.limit=64", "batch_size=16", "eval_images=8"]'
    text = f'''
name = "t"
run_root = "{tmp_path / 'ablate'}"
train_config = "{ROOT / 'configs/train/shapes.toml'}"
job = "{ROOT / 'configs/cluster/shapes_train.toml'}"
job_overrides = ["procs_per_node=1"]
train_overrides = ["model.width=32", "model.depth=1", "model.heads=2", "model.head_depth=1", "data.seq_len=128",
                   "data.batch_rows=2", "optim.warmup_steps=1", "train.log_every=2", "train.checkpoint_every=100"]
prep_overrides = ["use_ray=false", "shard_size=50"]
steps = 6
seeds = 2
samples = 100
tokenizer_steps = 3
eval = {{ per_prompt = 1, extra_prompts = 2, images = 4, steps = 2 }}
[[tokenizers]]
name = "kl"
config = "{ROOT / 'configs/tokenizer/shapes_kl.toml'}"
overrides = {tiny_tok}
[[tokenizers]]
name = "fsq"
config = "{ROOT / 'configs/tokenizer/shapes_fsq.toml'}"
overrides = {tiny_tok}
[[arms]]
name = "transfusion"
tokenizer = "kl"
[[arms]]
name = "var-continuous"
tokenizer = "kl"
overrides = ['model.mode="mar"', "model.var_scales=[1, 2, 4]"]
[[arms]]
name = "var-discrete"
tokenizer = "fsq"
overrides = ['model.mode="discrete"', "model.patch_size=1", "model.var_scales=[1, 2, 4, 8]"]
{extra}'''
    path = tmp_path / "tiny.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_specs_say_what_is_wrong(tmp_path):
    path = write_spec(tmp_path, '[[arms]]\nname = "x"\ntokenizer = "vq"\n')
    with pytest.raises(ConfigError, match="uses tokenizer 'vq'"):
        load_spec(path)
    path = write_spec(tmp_path, '[[arms]]\nname = "transfusion"\ntokenizer = "kl"\n')
    with pytest.raises(ConfigError, match="unique"):
        load_spec(path)
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        load_spec(write_spec(tmp_path), "huge")
    spec = load_spec(ROOT / "configs/ablate/dd.toml", "quick", {"seeds": 4})
    assert spec.seeds == 4 and spec.steps < load_spec(ROOT / "configs/ablate/dd.toml").steps
    assert {a.name for a in spec.arms} == {"transfusion", "mar-ar", "mar-masked", "var-continuous", "discrete-vq",
                                           "discrete-fsq", "var-discrete"}


def test_a_dry_run_before_the_data_stage_does_nothing(tmp_path, capsys):
    from pipeline.ablate.run import run_ablation

    message = run_ablation(str(write_spec(tmp_path)), dry_run=True)
    assert "data stage has not run yet" in message and message in capsys.readouterr().out
    assert not (tmp_path / "ablate").exists()


def test_a_difference_smaller_than_the_spread_is_no_difference():
    assert differs((0.8, 0.05), (0.6, 0.05)) == 1
    assert differs((0.6, 0.05), (0.8, 0.05)) == -1
    assert differs((0.8, 0.1), (0.7, 0.05)) == 0
    assert differs((None, None), (0.7, 0.05)) == 0


def test_claims_follow_the_numbers():
    def arm(role, overall, spread, seconds, passes=16, head=0, tokenizer="kl"):
        stats = {"overall": (overall, spread), "seconds_per_image": (seconds, 0.001), "passes": (passes, 0),
                 "head_passes": (head, 0)}
        return {"role": role, "tokenizer": tokenizer, "stats": stats}

    arms = {"transfusion": arm("transfusion", 0.50, 0.02, 0.2, 20), "mar-ar": arm("mar-ar", 0.70, 0.02, 0.3, 16, 320),
            "discrete-vq": arm("discrete-ar", 0.40, 0.02, 0.1, 64, tokenizer="vq")}
    tokenizers = {"kl": {"psnr": 30.0, "info_budget": {"kind": "kl"}},
                  "vq": {"psnr": 24.0, "info_budget": {"kind": "vq"}}}
    text = claims(arms, tokenizers)
    assert len(text) == 4
    assert "supported, the codes lose 6.00 dB" in text[0] and "continuous is better" in text[0]
    assert "Diffusion is slow" in text[1] and ": supported." in text[1]
    assert "supported (better)" in text[2]
    assert "mar-ar 0.700 ± 0.020 vs discrete-vq 0.400 ± 0.020: supported" in text[3]
    del arms["discrete-vq"]
    assert claims(arms, tokenizers)[3].endswith("Not measured: an arm it needs is missing or unfinished.")


@pytest.mark.slow
def test_the_tiny_grid_runs_end_to_end_and_resumes(tmp_path):
    path = write_spec(tmp_path)
    env = dict(os.environ, NODD_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    run = lambda *extra: subprocess.run([sys.executable, "-m", "pipeline.cli", "ablate", "--config", str(path), *extra],  # noqa: E731
                                        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    done = run()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / "ablate"
    plan = json.loads((root / "ablation.json").read_text())
    assert len(plan["runs"]) == 6 and all((Path(r["run_dir"]) / "eval.json").is_file() for r in plan["runs"])
    steps = {r["arm"]: r["steps"] for r in plan["runs"]}
    assert steps["transfusion"] == 6 and all(s >= 1 for s in steps.values())
    report = (root / "report.md").read_text()
    for expected in ("## Tokenizers", "| kl | kl |", "| fsq | fsq |", "VAR-discrete", "2/2", "**Discrete tokens lose",
                     "report_quality_vs_latency.png", "report_losses.png"):
        assert expected in report, expected
    for png in ("report_quality_vs_latency.png", "report_quality_vs_information_budget.png", "report_losses.png"):
        assert (root / png).stat().st_size > 0
    # equal compute: seed 0 spends what its plan counted on the same batches; every arm is within
    # half a step (whole steps) and the other seeds' batch-to-batch variation of the budget
    for r in plan["runs"]:
        records = [json.loads(line) for line in (Path(r["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
        spent = sum(x["flops"] for x in records)
        if r["seed"] == 0:
            assert abs(spent / r["flops"] - 1) < 0.01, r["name"]
        assert abs(spent - plan["budget_flops"]) <= 0.5 * spent / r["steps"] + 0.05 * plan["budget_flops"], r["name"]
    first = (Path(plan["runs"][0]["run_dir"]) / "eval.json").stat().st_mtime
    again = run("--resume")  # nothing left to do: no arm is trained or evaluated again
    assert again.returncode == 0, again.stderr[-2000:]
    assert "submitted" not in again.stdout and (Path(plan["runs"][0]["run_dir"]) / "eval.json").stat().st_mtime == first
    refused = run()
    assert refused.returncode == 1 and "--resume" in refused.stderr
    dry = run("--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("(done)") == 6, dry.stdout


def test_a_run_of_replicas_is_measured_against_one_replica_s_budget(tmp_path):
    """Each data-parallel replica draws its own batches: a 2-replica run logs twice the FLOPs of
    the one loader the plan counted, and the report divides by 2."""
    from pipeline.ablate.report import run_summary

    run = tmp_path / "arm"
    (run / "checkpoints" / "step-000004").mkdir(parents=True)
    (run / "checkpoints" / "step-000004" / "meta.json").write_text(json.dumps(
        {"step": 4, "parallel": {"dp_replicate": 2, "dp_shard": 1, "tp": 1, "pp": 1}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0, "flops": 5.0, "time": s}) + "\n"
                                               for s in (2, 4)))
    (run / "eval.json").write_text(json.dumps({"generation": {"overall_accuracy": 0.5, "single_object_accuracy": 0.5},
                                               "understanding": {"caption_accuracy": 0.5}, "text": {"perplexity": 3.0}}))
    summary = run_summary(run)
    assert summary["replicas"] == 2 and summary["flops"] == 10.0

"""train.trackers: MLflow (local file store) and W&B (offline files) get the config, every
logged step's metrics across a resume, and the evaluation's scores and report, read back here."""

import json

import pytest
from support.train_helpers import config, losses
from support.wandb_files import history, wandb_records

from core.errors import ConfigError
from pipeline.evaluate import evaluate
from pipeline.train.loop import train

pytest.importorskip("mlflow")
pytest.importorskip("wandb")
ALL = {"train__trackers": '["jsonl", "tensorboard", "mlflow", "wandb"]', "train__experiment": "tiny"}


def test_mlflow_and_wandb_hold_the_run_across_a_resume_and_its_report(tmp_path, shards, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "runs" / "tracked"
    train(config(run, shards["kl"], train__steps=3, **ALL))
    train(config(run, shards["kl"], **ALL), resume=True)  # to step 6, the same tracker runs
    expected = losses(run)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    evaluate(run, per_prompt=1, extra=0, images=4, steps=2)
    ids = json.loads((run / "trackers.json").read_text())

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(tmp_path / "runs" / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert [r.info.run_id for r in runs] == [ids["mlflow"]]
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "train/loss")} == pytest.approx(expected)
    # params are the config the run started with (MLflow params never change; a resume keeps them)
    assert runs[0].data.params["model.mode"] == "transfusion" and runs[0].data.params["train.steps"] == "3"
    assert "eval/generation.overall_accuracy" in runs[0].data.metrics
    names = {f.path for f in client.list_artifacts(ids["mlflow"], "report")}
    assert {"report/report.md", "report/eval_generations.png"} <= names

    files = sorted((run / "wandb").glob(f"offline-run-*-{ids['wandb']}/run-{ids['wandb']}.wandb"))
    assert len(files) == 3  # the first part, the resumed one and the evaluation: one W&B run id
    logged = history(files)
    assert logged["train/loss"] == pytest.approx(expected)
    assert "eval/understanding.caption_accuracy" in logged
    records = [r for r in wandb_records(files[0])]
    config_keys = {item.key for r in records if r.WhichOneof("record_type") == "run" for item in r.run.config.update}
    config_keys |= {item.key for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update}
    assert {"model", "train", "data"} <= config_keys
    uploaded = {f.path for r in wandb_records(files[-1]) if r.WhichOneof("record_type") == "files" for f in r.files.files}
    assert "report.md" in uploaded and any(p.startswith("media/images/report/eval_generations") for p in uploaded)


@pytest.mark.parametrize("trackers, words", [
    ('["jsonl", "comet"]', "unknown tracker 'comet'"),
    ('["tensorboard"]', "must keep 'jsonl'"),
])
def test_bad_tracker_lists_fail_when_the_config_loads(tmp_path, shards, trackers, words):
    with pytest.raises(ConfigError, match=words):
        config(tmp_path / "run", shards["kl"], train__trackers=trackers)


def test_a_missing_package_names_the_extra_before_training_and_sampling_does_not_need_it(tmp_path, shards,
                                                                                        monkeypatch):
    import importlib.util

    from pipeline.inference import load_run, sample_images

    real = importlib.util.find_spec
    wandb = '["jsonl", "wandb"]'
    cfg = config(tmp_path / "run", shards["kl"], train__trackers=wandb)  # loads anywhere: a config, not a run
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'nodd\[tracking\]'"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything is written
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(config(tmp_path / "run", shards["kl"], train__trackers=wandb, train__steps=2,
                 train__export_weights="false"))  # sampled through the run's own config, below
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    assert sample_images(load_run(tmp_path / "run"), "a red circle", 1, steps=2, cfg_scale=None, seed=0).shape[0] == 1

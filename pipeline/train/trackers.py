"""Experiment trackers behind the metrics sink (train.trackers): MLflow and Weights & Biases, on
rank 0 only, beside metrics.jsonl and TensorBoard (pipeline/train/metrics.py).

    train.trackers = ["jsonl", "tensorboard", "mlflow", "wandb"]
    train.tracking_uri = ""        # MLflow: "" = a local file store <run_dir>/../mlruns (runs side by side share it)
    train.experiment = ""          # MLflow experiment / W&B project ("" = "nodd")
    train.wandb_mode = "offline"   # W&B writes <run_dir>/wandb/ and syncs only when told ("online")

Each logs the run's resolved config once, every logged step's metrics, and - when `nodd eval`
runs on the run directory - its scores, report.md and the report's images (`log_evaluation`).
A run keeps one tracker run across resumes: the ids live in <run_dir>/trackers.json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import time
from pathlib import Path

from core.errors import ConfigError

TRACKERS = ("jsonl", "tensorboard", "mlflow", "wandb")
# (tensorboard is a base dependency; without it the sink warns and goes on, as before)
PACKAGES = {"mlflow": ("mlflow", "nodd[tracking]"), "wandb": ("wandb", "nodd[tracking]")}
IDS = "trackers.json"


def check_trackers(names: list[str]) -> None:
    """Unknown names fail when the config loads (whatever machine loads it)."""
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"train.trackers: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
    if "jsonl" not in names:
        raise ConfigError("train.trackers must keep 'jsonl': metrics.jsonl is what reports, ablations and plots read")


def check_packages(names: list[str]) -> None:
    """A tracker whose package this machine lacks, named with the extra to install. Called where
    trackers are used (every rank before training starts, `nodd eval` on a run), not when a
    config loads: sampling a run elsewhere needs no tracker."""
    for name in names:
        module, extra = PACKAGES.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.trackers has {name!r} but the {module} package is not installed: "
                              f"pip install '{extra}' (or drop {name!r} from train.trackers)")


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"model": {"width": 128}} -> {"model.width": 128}."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MLflowTracker:
    def __init__(self, run_dir: Path, settings, config: dict, run_id: str | None):
        from mlflow.tracking import MlflowClient

        uri = settings.tracking_uri or (run_dir.resolve().parent / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless told; it is
            # the store that needs no database package (mlflow-skinny)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = settings.experiment or "nodd"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        if run_id is None:
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            self._params(config)
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flat(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def files(self, paths: list[Path], folder: str) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), folder)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbTracker:
    def __init__(self, run_dir: Path, settings, config: dict, run_id: str | None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(mode=settings.wandb_mode, dir=str(run_dir), project=settings.experiment or "nodd",
                              name=run_dir.name, config=config, id=run_id or secrets.token_hex(4),
                              resume="allow", reinit="create_new")
        self.run_id = self.run.id

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def files(self, paths: list[Path], folder: str) -> None:
        images = {f"{folder}/{p.stem}": self.wandb.Image(str(p)) for p in paths if p.suffix == ".png"}
        if images:
            self.run.log(images)
        for path in paths:
            if path.suffix != ".png":
                self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


KINDS = {"mlflow": MLflowTracker, "wandb": WandbTracker}


class Trackers:
    """The MLflow / W&B trackers train.trackers asks for (rank 0 only)."""

    def __init__(self, run_dir: Path, settings, config: dict):
        """`settings`: the train section (LoopConfig); `config`: the resolved config to log."""
        check_packages(settings.trackers)
        run_dir = Path(run_dir)
        self.path = run_dir / IDS
        ids = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.open = {name: KINDS[name](run_dir, settings, config, ids.get(name))
                     for name in settings.trackers if name in KINDS}
        if self.open:
            self.path.write_text(json.dumps({n: t.run_id for n, t in self.open.items()}, indent=2), encoding="utf-8")

    def metrics(self, step: int, record: dict, prefix: str = "train/") -> None:
        values = {f"{prefix}{k}": float(v) for k, v in record.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "time"}
        for tracker in self.open.values():
            tracker.metrics(step, values)

    def files(self, paths: list[Path], folder: str) -> None:
        for tracker in self.open.values():
            tracker.files([p for p in paths if p.is_file()], folder)

    def close(self) -> None:
        for tracker in self.open.values():
            tracker.close()


def log_evaluation(run_dir: Path, settings, results: dict) -> None:
    """`nodd eval` on a run directory (`settings`: its saved train section): its scores,
    report.md and images go to the run's own tracker runs."""
    run_dir = Path(run_dir)
    if not (run_dir / IDS).is_file() or not any(name in KINDS for name in settings.trackers):
        return
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines() if metrics.is_file() else []
    step = int(json.loads(lines[-1])["step"]) if lines else 0
    scores = {f"{section}.{k}": v for section in ("generation", "understanding", "text", "video")
              for k, v in results.get(section, {}).items()}
    trackers = Trackers(run_dir, settings, {})
    trackers.metrics(step, scores, prefix="eval/")
    trackers.files([run_dir / "report.md", *sorted(run_dir.glob("*.png"))], "report")
    trackers.close()

"""TrainConfig: one typed tree for `nodd train` (defaults, then a TOML file, then key=value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import ConfigError
from core.schedule import warmup_cosine
from model.config import ModelConfig
from pipeline.data.config import DataConfig
from pipeline.engines.deepspeed.config import DeepSpeedConfig
from pipeline.engines.megatron.config import MegatronConfig
from pipeline.engines.native.config import NativeConfig
from pipeline.engines.parallel import ParallelConfig
from pipeline.train.trackers import check_trackers


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to `min_lr_ratio * lr`."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    grad_accum: int = 1  # micro-batches per optimizer step
    # > 0: keep an exponential moving average of the weights with this decay (e.g. 0.999); what
    # sampling, eval and export/ use (pipeline/engines/ema.py). 0 = the raw weights.
    ema_decay: float = 0.0

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate at `step` (0-based) of `total` steps."""
        return self.lr * warmup_cosine(step, self.warmup_steps, total, self.min_lr_ratio)

    def validate(self) -> None:
        if self.lr <= 0 or self.grad_accum < 1 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise ConfigError("optim.lr must be > 0, optim.grad_accum >= 1, warmup_steps and grad_clip >= 0")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"optim.ema_decay={self.ema_decay}: use 0 (off) or a decay in (0, 1), e.g. 0.999")


@dataclass
class LoopConfig:
    """The `train` section."""

    engine: Literal["native", "megatron", "deepspeed"] = "native"  # pipeline/engines/base.py: ENGINES
    steps: int = 200
    seed: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: bf16 compute, fp32 master weights (native/precision.py)
    log_every: int = 10
    checkpoint_every: int = 100  # also saved at the last step and on SIGTERM/SIGUSR1
    # > 0: every this many steps (and at the last) the validation losses on `eval_batches` packed
    # batches of the shards' held-out rows (prep's split.val_fraction; pipeline/train/validation.py)
    eval_every: int = 0
    eval_batches: int = 8
    keep_checkpoints: int = 2
    export_weights: bool = True  # also write step-N/export/ (safetensors; what sample and eval read)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile each block
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    # an export/, a checkpoint or a run dir: a new run starts from its weights (fresh optimizer and
    # data, step 0), whichever engine and layout wrote them. --resume takes precedence.
    init_from: str = ""
    # parameter-name patterns that do not train, e.g. ["backbone"] (pipeline/engines/freeze.py)
    freeze: list[str] = field(default_factory=list)
    # where metrics go (pipeline/train/trackers.py): also "mlflow", "wandb" (pip install 'nodd[tracking]')
    trackers: list[str] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    tracking_uri: str = ""  # MLflow; "" = a local file store <run_dir>/../mlruns
    experiment: str = ""  # MLflow experiment / W&B project ("" = "nodd")
    wandb_mode: Literal["offline", "online"] = "offline"
    peak_tflops: float = 0.0  # MFU denominator per device; 0 = measure a matmul at start (see train/metrics.py)

    def validate(self) -> None:
        if self.steps < 1 or self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ConfigError("train.steps, log_every, checkpoint_every and keep_checkpoints must be >= 1")
        if self.eval_every < 0 or self.eval_batches < 1:
            raise ConfigError(f"train.eval_every={self.eval_every} must be >= 0 (0 = no validation) and "
                              f"train.eval_batches={self.eval_batches} >= 1")
        check_trackers(self.trackers)


@dataclass
class EvalConfig:
    """The `eval` section: `nodd eval`'s settings for a run that evaluates itself when training
    ends (what an ablation arm's job does, so each arm is one job on any target)."""

    after_training: bool = False  # rank 0 runs `nodd eval` on the run dir after the last step
    per_prompt: int = 4
    extra_prompts: int = 24
    images: int = 256
    steps: int = 20
    cfg_scale: float = 3.0  # 0 = off
    videos: int = 0  # > 0: also this many moving-shapes clips (a run trained on video)
    frames: int = 8

    def validate(self) -> None:
        if min(self.per_prompt, self.images, self.steps, self.frames) < 1 or min(self.extra_prompts, self.videos) < 0 \
                or self.cfg_scale < 0:
            raise ConfigError("eval.per_prompt, images, steps and frames must be >= 1, extra_prompts, videos and "
                              "cfg_scale >= 0")


@dataclass
class TrainConfig:
    run_dir: str = "runs/train"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    native: NativeConfig = field(default_factory=NativeConfig)  # read by train.engine="native" only
    megatron: MegatronConfig = field(default_factory=MegatronConfig)  # read by train.engine="megatron" only
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)  # read by train.engine="deepspeed" only
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        if self.train.freeze:  # before any process starts: a typo would otherwise train everything
            from pipeline.engines.freeze import check_patterns

            check_patterns(self.model, self.train.freeze)

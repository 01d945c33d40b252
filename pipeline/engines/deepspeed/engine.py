"""DeepSpeedEngine (train.engine = "deepspeed"): nodd's whole model under DeepSpeed's engine
and ZeRO (stage 1, 2 or 3, optionally with the optimizer offloaded to the CPU), data parallel.

Build: the one-process model's initial weights (the run seed; or train.init_from) -> the
decay / no-decay AdamW groups -> `deepspeed.initialize` with a config written from nodd's own
settings (micro-batches, clipping, precision: DeepSpeed's defaults differ, e.g. it clips at 1.0
unless told). A step: for each micro-batch, forward through the engine, `engine.backward`
(which divides by the accumulation steps, as the native engine divides by the micro-batch
count), `engine.step` (a real optimizer step at the last micro-batch); the loss breakdown
averaged over data-parallel ranks.

ZeRO-3 gathers each module's parameters when the module is called: MultimodalModel calls every
module on every micro-batch (on zero rows where a batch has no image; model/multimodal.py `idle`),
so no rank waits on a gather another skipped.

parallel.pp > 1: DeepSpeed's PipelineEngine (its 1F1B schedule) over nodd's layers (pipe.py),
ZeRO-1 at most (DeepSpeed's rule), data parallel across pipelines.

optim.ema_decay: the average of ZeRO's fp32 master partitions (average.py), exported and
checkpointed whole.

Not built yet (refused before any process starts, see check/check_settings): tensor
parallelism, compile.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.distributed as dist

from core.errors import ConfigError, DataError
from model.config import ModelConfig
from model.multimodal import MultimodalModel
from model.pretrained import PretrainedLLM
from pipeline.distributed import DistInfo, join_single_process_group
from pipeline.engines.base import LOSS_PARTS, Engine, StepResult, optimizer_moments
from pipeline.engines.deepspeed.average import MasterAverage, master_partitions, whole_fp32
from pipeline.engines.freeze import freeze
from pipeline.engines.native.steps import add_losses
from pipeline.engines.deepspeed.pipe import Feed, nodd_named_parameters, pipeline_module
from pipeline.engines.deepspeed.universal import reshardable, universal_copy
from pipeline.engines.parallel import ParallelConfig
from pipeline.export import weights_to_start_from
from pipeline.train.checkpoint import layout_changes, read_layout_file
from pipeline.train.config import TrainConfig
from pipeline.train.metrics import matmul_params

log = logging.getLogger(__name__)
CHECKPOINT_DIR, TAG, LAYOUT_FILE = "deepspeed", "state", "deepspeed.json"


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    @classmethod
    def check(cls, parallel: ParallelConfig, model: ModelConfig, world: int, microbatches: int) -> ParallelConfig:
        resolved = super().check(parallel, model, world, microbatches)
        if resolved.tp > 1:
            raise ConfigError("train.engine=deepspeed has no tensor parallelism; set parallel.tp=1 (or use "
                              "train.engine=native / megatron)")
        if resolved.pp > 1 and resolved.pp_schedule != "1f1b":
            raise ConfigError(f"parallel.pp_schedule={resolved.pp_schedule} is not DeepSpeed's: its pipeline engine "
                              "runs its own 1F1B schedule; set parallel.pp_schedule=1f1b (or train.engine=native)")
        return resolved

    @classmethod
    def check_settings(cls, cfg: TrainConfig) -> None:
        ds = cfg.deepspeed
        missing = {"train.compile": cfg.train.compile}
        for setting, used in missing.items():
            if used:
                raise ConfigError(f"{setting} is not implemented by train.engine=deepspeed yet; leave it at its "
                                  "default or use train.engine=native")
        if cfg.parallel.pp > 1 and ds.zero_stage > 1:
            raise ConfigError(f"deepspeed.zero_stage={ds.zero_stage} cannot run with parallel.pp={cfg.parallel.pp}: "
                              "DeepSpeed's pipeline engine allows ZeRO stage 1 at most; set deepspeed.zero_stage=1 "
                              "(or parallel.pp=1)")
        if ds.offload_optimizer and not _cpu_adam_builds():
            raise ConfigError("deepspeed.offload_optimizer=true needs DeepSpeed's CPU Adam op, which cannot be built "
                              "here (it compiles with a C++ compiler at first use: install g++ / build-essential), "
                              "or set deepspeed.offload_optimizer=false")

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo):
        import deepspeed

        self.cfg, self.info = cfg, dist_info
        self.check_settings(cfg)
        self.pcfg = self.check(cfg.parallel, cfg.model, dist_info.world, cfg.optim.grad_accum)
        join_single_process_group(dist_info)
        for var, value in {"RANK": dist_info.rank, "LOCAL_RANK": 0, "WORLD_SIZE": dist_info.world}.items():
            os.environ.setdefault(var, str(value))  # what DeepSpeed reads, set by torchrun when there is one
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
        # The one-process model's initial weights (a CPU build under the run seed draws exactly
        # what the native engine's meta build replays)
        torch.manual_seed(cfg.train.seed)
        model = MultimodalModel(cfg.model)
        model.init_weights()
        if cfg.train.init_from:
            model.load_state_dict(weights_to_start_from(cfg.train.init_from, cfg.model))
        elif cfg.model.init_from:  # a pretrained LLM's backbone, text embeddings and LM head
            PretrainedLLM(cfg.model.init_from).load_into(model)
        freeze(model, cfg.train.freeze)
        self._matmul_params = matmul_params(model)
        recompute = cfg.train.activation_checkpointing  # torch's non-reentrant recompute of each block
        self.feed = None
        if self.pcfg.pp > 1:  # DeepSpeed's pipeline engine over nodd's layers (pipe.py)
            self.feed = Feed(model)
            module = pipeline_module(model, self.pcfg.pp, self.feed, recompute)
        else:
            model.backbone.checkpoint_blocks = recompute
            module = model
        self.engine, *_ = deepspeed.initialize(model=module.to(dist_info.device), optimizer=_adamw(module, cfg),
                                               config=ds_config(cfg, self.pcfg.dp))
        self.model = self.engine.module
        self.average = MasterAverage(self.engine, self._named_parameters(), cfg.optim.ema_decay) \
            if cfg.optim.ema_decay > 0 else None

    def _named_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """This rank's parameters (a pipeline: its stage's) under MultimodalModel's names."""
        return list(self.model.named_parameters()) if self.feed is None else nodd_named_parameters(self.model)

    @property
    def _keeps_whole_weights(self) -> bool:
        """Whether this rank writes the whole weights it gathers: rank 0, or with a pipeline each
        stage's first data-parallel rank."""
        return self.info.is_main if self.feed is None else self.engine.grid.get_data_parallel_id() == 0

    @property
    def dp_rank(self) -> int:
        if self.feed is None:
            return self.info.rank  # every process is a data-parallel rank (no tp, no pp)
        return self.engine.grid.get_data_parallel_id()

    def train_step(self, micro_batches, seeds, lr) -> StepResult:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        if self.feed is not None:
            return self._pipeline_step(micro_batches, seeds)
        totals = dict.fromkeys(LOSS_PARTS, 0.0)
        for batch, seed in zip(micro_batches, seeds):
            torch.manual_seed(seed)
            out = self.engine(batch)
            self.engine.backward(out.loss)  # scaled by 1 / gradient_accumulation_steps
            self.engine.step()  # the optimizer steps at the last micro-batch only
            add_losses(totals, out, len(micro_batches))
        return self._stepped(totals)

    def _pipeline_step(self, micro_batches, seeds) -> StepResult:
        """One train_batch of DeepSpeed's pipeline schedule; only the last stage holds losses
        (the other stages add zeros to the mean over data-parallel ranks)."""
        self.feed.start(micro_batches, seeds)
        self.engine.train_batch(data_iter=iter(self.feed.indices()))
        totals = dict.fromkeys(LOSS_PARTS, 0.0)
        for out in self.feed.outputs:  # empty except on the last stage
            add_losses(totals, out, len(micro_batches))
        self.feed.start([], [])
        return self._stepped(totals)

    def eval_step(self, micro_batches, seeds) -> dict[str, float]:
        totals = dict.fromkeys(LOSS_PARTS, 0.0)
        if self.feed is not None:  # DeepSpeed's inference schedule through the stages
            self.feed.start(micro_batches, seeds)
            self.engine.eval_batch(data_iter=iter(self.feed.indices()), return_logits=False, compute_loss=True,
                                   num_micro_batches=len(micro_batches))
            self.engine.module.train()  # eval_batch leaves the stages in eval mode
            outputs = self.feed.outputs  # empty except on the last stage
            self.feed.start([], [])
        else:
            outputs = []
            with torch.no_grad():
                for batch, seed in zip(micro_batches, seeds):
                    torch.manual_seed(seed)
                    outputs.append(self.engine(batch))
        for out in outputs:
            add_losses(totals, out, len(micro_batches))
        return self._mean_over_dp(totals)

    def _stepped(self, totals: dict[str, float]) -> StepResult:
        if self.average is not None:
            self.average.update()
        return StepResult(self._mean_over_dp(totals), float(self.engine.get_global_grad_norm() or 0.0))

    def _mean_over_dp(self, totals: dict[str, float]) -> dict[str, float]:
        """The loss breakdown averaged over data-parallel ranks (summed over the world: with a
        pipeline, only the last stage's ranks hold non-zero values)."""
        if self.info.world == 1:
            return totals
        t = torch.tensor([totals[k] for k in LOSS_PARTS], dtype=torch.float64, device=self.info.device)
        dist.all_reduce(t)
        return dict(zip(LOSS_PARTS, (t / self.pcfg.dp).cpu().tolist()))

    def _layout(self) -> dict:
        return {"world": self.info.world, "pp": self.pcfg.pp, "zero_stage": self.cfg.deepspeed.zero_stage,
                "precision": self.cfg.train.precision}

    def save(self, folder: Path) -> None:
        """DeepSpeed's own checkpoint (module, ZeRO optimizer partitions per rank) under
        folder/deepspeed/, and the layout it needs to load (ZeRO partitions are tied to the
        data-parallel size)."""
        folder = Path(folder)
        self.engine.save_checkpoint(str(folder / CHECKPOINT_DIR), tag=TAG)
        if self.average is not None:
            self.average.save(folder, self.info.rank, self._keeps_whole_weights)
        if self.info.is_main:
            (folder / LAYOUT_FILE).write_text(json.dumps(self._layout(), indent=2), encoding="utf-8")

    def load(self, folder: Path) -> None:
        folder = Path(folder)
        saved, layout = {"pp": 1} | read_layout_file(folder / LAYOUT_FILE), self._layout()  # pp: since pipelines
        tag, universal = TAG, saved != layout
        if universal:
            differs = layout_changes(saved, layout)
            if not reshardable(saved, layout):
                raise DataError(f"{folder} was written by the deepspeed engine under another layout ({differs}); it "
                                "resumes on another data-parallel size or ZeRO stage 1 <-> 2 only (no pipeline, same "
                                "precision). Resume with that layout, or train a new run from its weights "
                                f"(train.init_from={folder / 'export'})")
            log.info("resuming a deepspeed checkpoint under another layout (%s) through DeepSpeed's universal "
                     "checkpoint", differs)
            tag = universal_copy(folder / CHECKPOINT_DIR, TAG, self.info)
        self.engine._config.load_universal_checkpoint = universal  # DeepSpeed reads it from its config only
        try:
            path, _ = self.engine.load_checkpoint(str(folder / CHECKPOINT_DIR), tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        finally:
            self.engine._config.load_universal_checkpoint = False
        if path is None:
            raise DataError(f"{folder / CHECKPOINT_DIR} holds no DeepSpeed checkpoint; delete {folder} to resume from "
                            "the checkpoint before it")
        if self.average is not None:
            self.average.load(folder)

    def state_holders(self):
        # ZeRO-3 leaves each parameter empty outside its module's forward; ds_tensor is this
        # rank's partition. The ZeRO optimizer wraps the torch (or CPU) Adam, whose state holds
        # the moments, and keeps fp32 master partitions of its own (copies, even in fp32).
        params = [getattr(p, "ds_tensor", p) for p in self.engine.module.parameters()]
        return params, optimizer_moments([self.engine.optimizer.optimizer]), master_partitions(self.engine.optimizer)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The fp32 weights (in bf16: ZeRO's fp32 master copies, not the rounded bf16 ones), or
        with optim.ema_decay their average, whole, kept by rank 0 (with a pipeline: each stage's
        by its first data-parallel rank)."""
        weights = self.average.whole() if self.average is not None else whole_fp32(self._named_parameters())
        return weights if self._keeps_whole_weights else {}


def _cpu_adam_builds() -> bool:
    """Whether DeepSpeed's CPU Adam op (the offloaded optimizer) can be built on this machine."""
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().create_op_builder("CPUAdamBuilder").is_compatible())


def _adamw(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The native engine's AdamW groups (weight decay on matrices only). With the optimizer
    offloaded, DeepSpeed's CPU Adam (a compiled op) takes the same groups."""
    o = cfg.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.deepspeed.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=1e-8, foreach=False)


def ds_config(cfg: TrainConfig, dp: int) -> dict:
    """DeepSpeed's config from nodd's: one packed batch per micro-step, every value nodd sets
    itself written out (DeepSpeed's defaults differ: gradient_clipping 1.0, bf16 gradients)."""
    ds = cfg.deepspeed
    zero = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.param_persistence_threshold
        if ds.offload_params:
            zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": 1,  # one packed batch (data.batch_rows rows) per micro-step
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.optim.grad_accum * dp,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW, with nodd's groups
        "steps_per_print": 2 ** 31 - 1,  # nodd logs its own metrics
        "wall_clock_breakdown": False,
    }
    if cfg.train.precision == "bf16":
        # bf16 parameters and compute, fp32 master weights; gradients accumulate in fp32
        config["bf16"] = {"enabled": True}
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config

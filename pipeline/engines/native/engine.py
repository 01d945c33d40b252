"""NativeEngine: torch.distributed's own parallelism (FSDP2, DTensor tensor parallel,
torch.distributed.pipelining), the reference every other engine matches loss for loss.

Build: the model on the meta device -> the pipeline cut -> parallelize (tensor parallel,
activation checkpointing, compile, FSDP2) -> materialise this rank's shards with the weights a
one-process run starts from (materialize.py). A step: forward and backward over the micro-batches
(LocalStep, or the pipeline schedule; in bf16 on copies cast once a step, precision.py) -> sum
tensor-parallel partial gradients -> clip over every mesh and stage -> AdamW -> the loss breakdown
averaged over data-parallel ranks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from model.multimodal import MultimodalModel
from model.pretrained import PretrainedLLM
from pipeline.distributed import DistInfo
from pipeline.engines.base import LOSS_PARTS, Engine, StepResult
from pipeline.engines.ema import WeightAverage
from pipeline.engines.freeze import freeze
from pipeline.engines.native.materialize import init_plan, materialise, replay_construction_draws
from pipeline.engines.native.optim import build_optimizer, clip_grad_norm
from pipeline.engines.native.parallelize import build_mesh, parallelize, sync_partial_grads
from pipeline.engines.native.pipelining import PipelineStep, build_stage
from pipeline.engines.native.precision import DTYPES, CastCopies
from pipeline.engines.native.state import load_state, save_state
from pipeline.engines.native.steps import LocalStep
from pipeline.export import weights_to_start_from
from pipeline.train.config import TrainConfig
from pipeline.train.metrics import matmul_params


class NativeEngine(Engine):
    name = "native"

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo):
        self.cfg, self.info = cfg, dist_info
        self.pcfg = self.check(cfg.parallel, cfg.model, dist_info.world, cfg.optim.grad_accum)
        self.mesh = build_mesh(self.pcfg, dist_info.device.type) if dist_info.world > 1 else None
        self.model, self.root = self._build_model()
        self.optimizer = build_optimizer(self.model, cfg.optim, distributed=self.mesh is not None)
        self.average = WeightAverage(self.model, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        # bf16: FSDP2 casts at each all-gather (parallelize); without FSDP, copies cast once a step
        dtype = DTYPES[cfg.train.precision]
        copies = CastCopies(self.root, dtype) if dtype != torch.float32 and self.pcfg.dp == 1 else None
        if self.pcfg.pp > 1:
            self.forward_backward = PipelineStep(self.root, self.mesh, self.pcfg, copies, dist_info.device,
                                                 cfg.optim.grad_accum, cfg.data.batch_rows, cfg.data.seq_len, dtype)
        else:
            self.forward_backward = LocalStep(self.model, copies)

    def _build_model(self) -> tuple[MultimodalModel, torch.nn.Module]:
        """This rank's part of the parallel model, and the module a step runs (the model, or its
        pipeline stage). Nothing is allocated before the layout is applied."""
        cfg = self.cfg
        with torch.device("meta"):
            model = MultimodalModel(cfg.model)
        freeze(model, cfg.train.freeze)  # on the whole model: every layout carries requires_grad along
        self._matmul_params = matmul_params(model)  # of the whole model, before the pipeline cut
        plan = init_plan(model)
        torch.manual_seed(cfg.train.seed)
        replay_construction_draws(model)
        root = build_stage(model, self.mesh, self.pcfg) if self.pcfg.pp > 1 else model
        parallelize(model, self.mesh, self.pcfg, root=root, activation_checkpointing=cfg.train.activation_checkpointing,
                    compile_blocks=cfg.train.compile, reshard_after_forward=cfg.native.reshard_after_forward,
                    precision=cfg.train.precision)
        start_from = weights_to_start_from(cfg.train.init_from, cfg.model) if cfg.train.init_from else None
        llm = PretrainedLLM(cfg.model.init_from) if cfg.model.init_from and start_from is None else None
        materialise(model, plan, self.info.device, start_from, llm)
        return model, root

    @property
    def dp_rank(self) -> int:
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else 0

    def train_step(self, micro_batches, seeds, lr) -> StepResult:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals = self.forward_backward(micro_batches, seeds)
        if self.mesh is not None:
            sync_partial_grads(self.model, self.mesh, self.pcfg)
        stage_group = self.mesh["pp"].get_group() if self.pcfg.pp > 1 else None
        grad_norm = clip_grad_norm(list(self.model.parameters()), self.cfg.optim.grad_clip, stage_group,
                                   self.info.device)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.average is not None:
            self.average.update()
        return StepResult(self._mean_over_dp(totals), grad_norm)

    def eval_step(self, micro_batches, seeds) -> dict[str, float]:
        return self._mean_over_dp(self.forward_backward.evaluate(micro_batches, seeds))

    def _mean_over_dp(self, totals: dict[str, float]) -> dict[str, float]:
        """Each data-parallel rank saw other data: the logged loss is their mean (what the
        averaged gradients optimise), not rank 0's own value."""
        if self.pcfg.dp == 1:
            return totals
        t = torch.tensor([totals[k] for k in LOSS_PARTS], dtype=torch.float64, device=self.info.device)
        dist.all_reduce(t, group=self.mesh["dp"].get_group())
        return dict(zip(LOSS_PARTS, (t / self.pcfg.dp).cpu().tolist()))

    def save(self, folder: Path) -> None:
        save_state(folder, self.model, self.optimizer, self.average)

    def load(self, folder: Path) -> None:
        load_state(folder, self.model, self.optimizer, self.average)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Each stage's parameters (their average under optim.ema_decay), gathered one at a time
        on its first data- and tensor-parallel rank (which keeps them on the CPU); the other
        ranks only take part in the gathers."""
        keeps = self.mesh is None or (self.mesh["dp"].get_local_rank() == 0 and self.mesh["tp"].get_local_rank() == 0)
        weights = {}
        named = self.average.named_average().items() if self.average is not None else self.model.named_parameters()
        for name, param in named:
            full = param.full_tensor() if hasattr(param, "full_tensor") else param
            if keeps:
                weights[name] = full.detach().to("cpu", copy=True)
        return weights

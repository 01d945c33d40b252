"""MegatronEngine (train.engine = "megatron"): nodd's model under megatron-core's tensor and
pipeline parallelism, its DDP and its distributed optimizer.

Build: megatron's process groups (`initialize_model_parallel(tp, pp)`; the loader shards by
megatron's data-parallel rank) -> the one-process model's initial weights (the run seed, as the
native engine draws them) -> this rank's stage (stage.py: nodd's embeddings and heads around a
megatron TransformerBlock holding the converted weights of its layers and tensor-parallel rank)
-> megatron DDP (fp32 gradient buffers) -> megatron's optimizer (AdamW, clipping, optionally the
distributed optimizer). A step: megatron's forward-backward schedule (no pipelining, or 1F1B)
over the micro-batches, `finalize_model_grads` (data-parallel reduction, tensor-parallel sums of
the qk-norm gradients, averages of the replicated parts), the optimizer step, and the loss
breakdown shared from the last stage and averaged over data-parallel ranks.

On a machine without a GPU, cpu_compat.py patches megatron-core's few CUDA calls (logged).
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from core.errors import ConfigError
from model.config import ModelConfig
from model.pretrained import PretrainedLLM
from pipeline.distributed import DistInfo, join_single_process_group
from pipeline.engines.base import LOSS_PARTS, Engine, StepResult, optimizer_moments
from pipeline.engines.ema import WeightAverage
from pipeline.engines.freeze import freeze
from pipeline.engines.native.precision import DTYPES
from pipeline.engines.parallel import ParallelConfig
from pipeline.export import weights_to_start_from
from pipeline.train.config import TrainConfig
from pipeline.train.metrics import matmul_params


class MegatronEngine(Engine):
    name = "megatron"

    @classmethod
    def check(cls, parallel: ParallelConfig, model: ModelConfig, world: int, microbatches: int) -> ParallelConfig:
        resolved = super().check(parallel, model, world, microbatches)
        if resolved.pp > 1 and resolved.pp_schedule != "1f1b":
            raise ConfigError(f"train.engine=megatron runs megatron-core's 1F1B pipeline schedule; "
                              f"parallel.pp_schedule={resolved.pp_schedule!r} is the native engine's (use 1f1b)")
        if resolved.tp > 1 and model.tie_embeddings:
            raise ConfigError("train.engine=megatron with parallel.tp > 1 splits the LM head by vocabulary rows; "
                              "set model.tie_embeddings=false")
        return resolved

    @classmethod
    def check_settings(cls, cfg: TrainConfig) -> None:
        # Not built yet, refused rather than silently ignored (docs/engines.md, "What is missing")
        missing = {"train.compile": cfg.train.compile}
        for setting, used in missing.items():
            if used:
                raise ConfigError(f"{setting} is not implemented by train.engine=megatron yet; leave it at its "
                                  "default or use train.engine=native")
        vp, pp = cfg.megatron.virtual_stages, cfg.parallel.pp
        if vp > 1:  # megatron's interleaved schedule
            if pp == 1:
                raise ConfigError("megatron.virtual_stages > 1 interleaves pipeline stages; it needs parallel.pp > 1")
            if cfg.model.depth % (pp * vp):
                raise ConfigError(f"model.depth={cfg.model.depth} is not divisible by parallel.pp * megatron.virtual_stages"
                                  f" = {pp * vp}")
            if cfg.optim.grad_accum % pp:
                raise ConfigError(f"the interleaved schedule runs micro-batches in groups of parallel.pp={pp}; set "
                                  f"optim.grad_accum to a multiple of it (got {cfg.optim.grad_accum})")

    def __init__(self, cfg: TrainConfig, dist_info: DistInfo):
        from megatron.core import parallel_state

        from pipeline.engines.megatron.cpu_compat import cuda_to_cpu, enable_if_no_gpu
        from pipeline.engines.megatron.state import main_tensors

        from pipeline.engines.megatron.backbone import check_transformer_engine

        self.cfg, self.info = cfg, dist_info
        self.check_settings(cfg)
        check_transformer_engine(cfg.megatron.core_attention)
        self.dtype = DTYPES[cfg.train.precision]
        self.pcfg = self.check(cfg.parallel, cfg.model, dist_info.world, cfg.optim.grad_accum)
        join_single_process_group(dist_info)
        if parallel_state.model_parallel_is_initialized():
            parallel_state.destroy_model_parallel()
        vp = cfg.megatron.virtual_stages
        # a virtual pipeline size makes get_forward_backward_func pick the interleaved schedule
        parallel_state.initialize_model_parallel(self.pcfg.tp, self.pcfg.pp,
                                                 virtual_pipeline_model_parallel_size=vp if vp > 1 else None)
        enable_if_no_gpu()
        if dist_info.device.type == "cuda":
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            model_parallel_cuda_manual_seed(cfg.train.seed)
        # With one data-parallel rank there is nothing to shard, and the distributed optimizer's
        # per-step parameter all-gather (a copy through a gloo worker thread) makes libgomp
        # start a second thread team; with more OpenMP threads than cores it stops spinning
        # between parallel regions, and every later op of the process ran slower (one process,
        # 2 cores: 163 against 136 ms a step; docs/engines.md, "CPU pitfalls").
        self.distributed_optimizer = cfg.megatron.distributed_optimizer and self.pcfg.dp > 1
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        self.pp_rank = parallel_state.get_pipeline_model_parallel_rank()
        with cuda_to_cpu():
            self.chunks, self.models, self._matmul_params = self._build()
            self.optimizer = self._build_optimizer()
        # optim.ema_decay: the average of the optimizer's fp32 main weights (this rank's slices of
        # them under the distributed optimizer), what export/ then holds
        self.average = (WeightAverage.over([(str(i), q) for i, q in enumerate(main_tensors(self.optimizer))],
                                           cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None)

    # ---- build ----------------------------------------------------------------------------------
    def _build(self):
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from megatron.core.distributed.finalize_model_grads import finalize_model_grads

        from pipeline.engines.megatron.backbone import transformer_config
        from pipeline.engines.megatron.stage import StagePart

        cfg, pcfg = self.cfg, self.pcfg
        vp = cfg.megatron.virtual_stages
        config = transformer_config(cfg.model, tp=pcfg.tp, pp=pcfg.pp, dtype=self.dtype,
                                    virtual_pipeline_model_parallel_size=vp if vp > 1 else None)
        # The one-process model's initial weights (a CPU build under the run seed draws exactly
        # what the native engine's meta build replays), then this rank's chunks of them.
        torch.manual_seed(cfg.train.seed)
        part = StagePart(cfg.model)
        part.init_weights()
        if cfg.train.init_from:
            part.load_state_dict(weights_to_start_from(cfg.train.init_from, cfg.model))
        elif cfg.model.init_from:  # a pretrained LLM's backbone, text embeddings and LM head
            PretrainedLLM(cfg.model.init_from).load_into(part)
        freeze(part, cfg.train.freeze)  # the chunks' nodd parts keep it; their blocks: _freeze_block
        whole = {k: v.detach().clone() for k, v in part.state_dict().items()}
        self._frozen = {n for n, p in part.named_parameters() if not p.requires_grad}
        params = matmul_params(part)
        # chunk v of pipeline rank r is virtual stage v * pp + r (megatron's interleaved order)
        chunks = [self._build_chunk(config, part if v == vp - 1 else copy.deepcopy(part), whole, v, vp)
                  for v in range(vp)]
        # fp32 gradient buffers (megatron's main_grad): bf16 micro-batch gradients accumulate in fp32
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                   use_distributed_optimizer=self.distributed_optimizer)
        models = [DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk) for chunk in chunks]
        config.finalize_model_grads_func = finalize_model_grads
        config.no_sync_func = [m.no_sync for m in models] if vp > 1 else models[0].no_sync
        return chunks, models, params

    def _build_chunk(self, config, part, whole: dict, v: int, vp: int):
        """Virtual stage v * pp + pp_rank of the model: its nodd parts (embeddings on the first,
        heads on the last), its layers in a TransformerBlock holding their converted weights."""
        from pipeline.engines.megatron.backbone import build_block, recompute_layers
        from pipeline.engines.megatron.convert import to_megatron
        from pipeline.engines.megatron.stage import MegatronStage, VocabParallelHead
        from pipeline.engines.native.pipelining import split_model

        cfg, pcfg = self.cfg, self.pcfg
        stages, index = pcfg.pp * vp, v * pcfg.pp + self.pp_rank
        first, last = index == 0, index == stages - 1
        per_chunk = cfg.model.depth // stages
        split_model(part, index, stages)
        part.backbone = None
        if last and pcfg.tp > 1:
            head = VocabParallelHead(config, cfg.model.width, cfg.model.vocab_size, self.tp_rank, pcfg.tp)
            head.load_full(whole["lm_head.weight"])
            head.requires_grad_("lm_head.weight" not in self._frozen)
            part.lm_head = head
        block = build_block(config, cfg.model, cfg.megatron.core_attention, pre_process=first, post_process=last,
                            vp_stage=v if vp > 1 else None)
        if cfg.train.activation_checkpointing:
            recompute_layers(block)
        block.load_state_dict(to_megatron(whole, index * per_chunk, per_chunk, self.tp_rank, pcfg.tp, final_norm=last),
                              strict=True)
        if self._frozen:
            self._freeze_block(block, whole, index * per_chunk, per_chunk, last)
        chunk = MegatronStage(config, part, block, first, last, cfg.megatron.core_attention, first_layer=index * per_chunk)
        chunk.to(self.info.device)
        if self.dtype != torch.float32:
            # bf16 parameters, as megatron's Float16Module makes them (`module.bfloat16()`), the
            # fp32 main copies held by the optimizer. Not Float16Module itself: it would prefix
            # every state-dict key with "module." and its input casts do not reach nodd's batch
            # (the model casts its inputs to the weights' dtype and its losses to fp32 itself).
            for p in chunk.parameters():
                p.data = p.data.to(self.dtype)
        return chunk

    def _freeze_block(self, block, whole: dict, first_layer: int, layers: int, last: bool) -> None:
        """train.freeze on megatron's layers: a mask of the frozen nodd tensors goes through the
        same conversion as the weights, so each megatron tensor is frozen where all its nodd
        sources are; one fused from frozen and trainable sources (linear_fc1 = gate + up,
        linear_qkv) cannot be, and is refused."""
        from pipeline.engines.megatron.convert import to_megatron

        mask = {k: torch.full(v.shape, k in self._frozen) for k, v in whole.items()}
        converted = to_megatron(mask, first_layer, layers, self.tp_rank, self.pcfg.tp, final_norm=last)
        for name, param in block.named_parameters():
            if name in converted and bool(converted[name].all()):
                param.requires_grad_(False)
            elif name in converted and bool(converted[name].any()):
                raise ConfigError(f"train.freeze: megatron's {name} fuses frozen and trainable nodd tensors "
                                  "(gate and up, or q, k and v); freeze both halves or neither")

    def _build_optimizer(self):
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        o = self.cfg.optim
        config = OptimizerConfig(optimizer="adam", lr=o.lr, weight_decay=o.weight_decay, adam_beta1=o.beta1,
                                 adam_beta2=o.beta2, adam_eps=1e-8, clip_grad=o.grad_clip, params_dtype=self.dtype,
                                 bf16=self.dtype == torch.bfloat16, use_distributed_optimizer=self.distributed_optimizer)
        return get_megatron_optimizer(config, self.models)

    # ---- Engine interface -----------------------------------------------------------------------
    @property
    def dp_rank(self) -> int:
        from megatron.core import parallel_state

        return parallel_state.get_data_parallel_rank()

    def train_step(self, micro_batches, seeds, lr) -> StepResult:
        from pipeline.engines.megatron.cpu_compat import cuda_to_cpu

        # what megatron's OptimizerParamScheduler does each step (the trainer owns the schedule):
        # without it every group would keep the full weight decay, norms and biases included
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = self.cfg.optim.weight_decay * group.get("wd_mult", 1.0)
        for model in self.models:
            model.zero_grad_buffer()
        self.optimizer.zero_grad()
        with cuda_to_cpu():
            outputs = self._schedule(micro_batches, seeds, forward_only=False)
            _ok, grad_norm, _ = self.optimizer.step()
        if self.average is not None:
            self.average.update()
        return StepResult(self._mean_losses(outputs, len(micro_batches)), float(grad_norm or 0.0))

    def eval_step(self, micro_batches, seeds) -> dict[str, float]:
        from pipeline.engines.megatron.cpu_compat import cuda_to_cpu

        with cuda_to_cpu(), torch.no_grad():
            outputs = self._schedule(micro_batches, seeds, forward_only=True)
        return self._mean_losses(outputs, len(micro_batches))

    def _schedule(self, micro_batches, seeds, forward_only: bool) -> list[dict[str, float]]:
        """Megatron's forward-backward schedule over the micro-batches (its pipeline schedule
        when pp > 1); each micro-batch's loss breakdown on the last stage, nothing elsewhere."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        outputs = []

        def loss_func(out, loss):
            # read before returning: the schedule divides `loss` by the micro-batch count in place
            outputs.append({"loss": float(loss.detach()), **{k: float(v) for k, v in out.losses.items()}})
            return loss, {}

        def forward_step(data_iterator, model):
            batch, seed = next(data_iterator)
            out = model(batch, seed)
            if not model.module.post_process:
                return out, None
            return out.loss, partial(loss_func, out)

        rows, seq_len = micro_batches[0].tokens.shape
        data = list(zip(micro_batches, seeds))  # every chunk reads every micro-batch (its masks, positions)
        iterators = [iter(data) for _ in self.models] if len(self.models) > 1 else iter(data)
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iterators,
                                    model=self.models, num_microbatches=len(micro_batches), seq_length=seq_len,
                                    micro_batch_size=rows, forward_only=forward_only)
        return outputs

    def _mean_losses(self, outputs: list[dict[str, float]], count: int) -> dict[str, float]:
        """The loss breakdown averaged over micro-batches and data-parallel ranks, on every rank."""
        from megatron.core import parallel_state

        values = [0.0] * len(LOSS_PARTS)
        for parts in outputs:  # empty except on the last stage
            values = [v + parts[k] / count for v, k in zip(values, LOSS_PARTS)]
        totals = torch.tensor(values, dtype=torch.float64, device=self.info.device)
        if self.pcfg.pp > 1:  # the last stage computed them; the others hold zeros
            dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
        if self.pcfg.dp > 1:
            dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
            totals /= self.pcfg.dp
        return dict(zip(LOSS_PARTS, totals.cpu().tolist()))

    def _layout(self) -> dict:
        return {"world": self.info.world, "tp": self.pcfg.tp, "pp": self.pcfg.pp, "dp": self.pcfg.dp,
                "distributed_optimizer": self.distributed_optimizer, "precision": self.cfg.train.precision,
                "virtual_stages": self.cfg.megatron.virtual_stages}

    def save(self, folder: Path) -> None:
        from pipeline.engines.megatron.cpu_compat import cuda_to_cpu
        from pipeline.engines.megatron.state import save_state

        with cuda_to_cpu():
            save_state(folder, self.info.rank, self.chunks, self.optimizer, self._layout(), self.average)

    def load(self, folder: Path) -> None:
        from pipeline.engines.megatron.cpu_compat import cuda_to_cpu
        from pipeline.engines.megatron.state import load_state

        with cuda_to_cpu():
            load_state(folder, self.info.rank, self.chunks, self.optimizer, self._layout(), self.average)

    def state_holders(self):
        inner = [o.optimizer for o in getattr(self.optimizer, "chained_optimizers", [self.optimizer])]
        masters = [p for opt in inner for g in opt.param_groups for p in g["params"]]  # fp32 mains in bf16
        return [p for m in self.models for p in m.parameters()], optimizer_moments(inner), masters

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Whole tensors in MultimodalModel names: the tensor-parallel shards of this rank's
        chunks' layers (and LM head) gathered, kept by the stage's first data- and
        tensor-parallel rank."""
        from megatron.core import parallel_state

        from pipeline.engines.megatron.state import main_weights

        keeps = parallel_state.get_data_parallel_rank() == 0 and self.tp_rank == 0
        weights = {}
        for chunk in self.chunks:
            named = dict(chunk.named_parameters())
            # the fp32 main weights (not bf16's rounded copies), or their average under optim.ema_decay
            fp32 = dict(zip(named, main_weights(self.optimizer, list(named.values()), self.average)))
            weights.update(self._chunk_weights(chunk, fp32))
        return {k: v.to("cpu", copy=True) for k, v in weights.items()} if keeps else {}

    def _chunk_weights(self, chunk, fp32: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from megatron.core import parallel_state

        from pipeline.engines.megatron.convert import from_megatron
        from pipeline.engines.megatron.stage import VocabParallelHead

        tp_group = parallel_state.get_tensor_model_parallel_group()

        def gathered(name: str) -> list[torch.Tensor]:
            t = fp32[name]
            if self.pcfg.tp == 1:
                return [t]
            parts = [torch.empty_like(t) for _ in range(self.pcfg.tp)]
            dist.all_gather(parts, t.contiguous(), group=tp_group)
            return parts

        part = chunk.part
        weights = {name.removeprefix("part."): t for name, t in fp32.items()
                   if name.startswith("part.") and not name.startswith("part.lm_head.")}
        if isinstance(part.lm_head, VocabParallelHead):
            weights["lm_head.weight"] = torch.cat(gathered("part.lm_head.linear.weight"))[:part.lm_head.vocab]
        elif part.lm_head is not None and not self.cfg.model.tie_embeddings:
            weights["lm_head.weight"] = fp32["part.lm_head.weight"]
        block = {name.removeprefix("decoder."): gathered(name) for name in fp32 if name.startswith("decoder.")}
        shards = [{name: parts[r] for name, parts in block.items()} for r in range(self.pcfg.tp)]
        weights.update(from_megatron(shards, chunk.first_layer, final_norm=chunk.post_process))
        return weights

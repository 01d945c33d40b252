"""train.activation_checkpointing under the megatron engine: each TransformerLayer runs again in
backward (torch's non-reentrant checkpoint) and the step is the same step."""

import pytest
import torch
from support.parity import LR, MICRO, batches, seed_of, train_config

from pipeline.distributed import DistInfo
from pipeline.engines.megatron.engine import MegatronEngine

ONE = DistInfo(0, 1, torch.device("cpu"))


@pytest.mark.parametrize("core_attention", ["nodd", "local"])
def test_recomputed_layers_give_the_same_steps(megatron_one_process, core_attention):
    results, calls = {}, {}
    for recompute in (False, True):
        cfg = train_config("transfusion", {}, "megatron")
        cfg.megatron.core_attention = core_attention
        cfg.train.activation_checkpointing = recompute
        engine = MegatronEngine(cfg, ONE)
        # a pre-hook: torch's checkpoint stops recomputing (mid-MLP) once it has every saved tensor
        counted = engine.chunks[0].decoder.layers[0].self_attention
        calls[recompute] = 0

        def count(*_, recompute=recompute):
            calls[recompute] += 1

        counted.register_forward_pre_hook(count)
        data = batches(cfg.model, 0, 2)
        results[recompute] = [engine.train_step(data[s], [seed_of(s, m, 0) for m in range(MICRO)], LR)
                              for s in range(2)]
    assert [(r.losses, r.grad_norm) for r in results[True]] == [(r.losses, r.grad_norm) for r in results[False]]
    assert calls == {False: 2 * MICRO, True: 4 * MICRO}  # every micro-batch's forward ran again in backward

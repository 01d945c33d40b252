"""nodd's backbone as a megatron-core TransformerBlock: its weights convert exactly both ways and
it computes what model/transformer.py computes, forward and backward, with either core attention."""

import pytest
import torch
from support.model_helpers import documents, packer, tiny_config, tiny_model

from pipeline.engines.megatron.backbone import block_mask_argument, build_block, rotary_freqs, transformer_config
from pipeline.engines.megatron.convert import from_megatron, to_megatron


def backbone_weights(model):
    return {k: v.detach() for k, v in model.state_dict().items() if k.startswith("backbone.")}


def test_weights_convert_both_ways_exactly_under_tensor_parallelism():
    cfg = tiny_config(qk_norm=True, depth=3)
    weights = backbone_weights(tiny_model(cfg))
    for tp in (1, 2):
        shards = [to_megatron(weights, 0, cfg.depth, rank, tp) for rank in range(tp)]
        back = from_megatron(shards, 0)
        assert back.keys() == weights.keys()
        assert all(torch.equal(back[k], weights[k]) for k in weights)
    # a pipeline stage holding layers 1-2 numbers them from 0, and maps back to 1-2
    stage = to_megatron(weights, 1, 2, final_norm=False)
    assert sorted({k.split(".")[1] for k in stage}) == ["0", "1"]
    assert torch.equal(from_megatron([stage], 1, final_norm=False)["backbone.layers.2.ffn.w3.weight"],
                       weights["backbone.layers.2.ffn.w3.weight"])


@pytest.mark.parametrize("mode", ["transfusion", "mar"])  # bidirectional image spans, and causal
@pytest.mark.parametrize("core_attention", ["nodd", "local"])
def test_block_matches_nodds_backbone_forward_and_backward(megatron_one_process, mode, core_attention):
    cfg = tiny_config(mode, qk_norm=True)
    model = tiny_model(cfg)
    batch = packer(cfg).pack(documents(cfg) + documents(cfg, seed=1), seq_len=64)
    ctx = model.batch_context(batch)
    h = torch.randn(*batch.tokens.shape, cfg.width, generator=torch.Generator().manual_seed(0))

    block = build_block(transformer_config(cfg), cfg, core_attention)
    block.load_state_dict(to_megatron(backbone_weights(model), 0, cfg.depth), strict=True)

    x = h.clone().requires_grad_()
    expected = model.backbone(x, ctx)
    expected.square().sum().backward()
    y = h.clone().transpose(0, 1).contiguous().requires_grad_()
    mask = block_mask_argument(ctx, batch.segment_ids, batch.span_ids, model.bidirectional, core_attention)
    got = block(y, mask, rotary_pos_emb=rotary_freqs(batch.positions, cfg.head_dim, cfg.rope_theta,
                                                               core_attention))
    got.square().sum().backward()

    torch.testing.assert_close(got.transpose(0, 1), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.grad.transpose(0, 1), x.grad, atol=1e-5, rtol=1e-5)
    grads = from_megatron([{k: p.grad for k, p in block.named_parameters()}], 0)
    for name, p in model.backbone.named_parameters():
        torch.testing.assert_close(grads[f"backbone.{name}"], p.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_swiglu_backward_matches_autograd_on_a_strided_input():
    from pipeline.engines.megatron.swiglu import SwiGLU

    x = torch.randn(5, 3, 16, dtype=torch.float64).transpose(0, 1).requires_grad_()  # not contiguous
    assert torch.autograd.gradcheck(SwiGLU(), (x,))
    gate, up = x.detach().chunk(2, -1)
    torch.testing.assert_close(SwiGLU()(x), torch.nn.functional.silu(gate) * up)

import math

import pytest
import torch
from support.model_helpers import documents, packer, tiny_config, tiny_model

from core.errors import ConfigError
from model import masks
from model.attention import AttentionContext, attend, select_backend


def reference_attention(q, k, v, allowed):
    """Softmax(QK^T/sqrt(d)) V with masked logits, written out; GQA by repeating kv heads."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return scores.softmax(-1) @ v


def packed_ids(mode):
    cfg = tiny_config(mode, latent_size=4)
    b = packer(cfg).pack(documents(cfg) + documents(cfg, seed=1), seq_len=64)
    return b, mode == "transfusion"


def ctx_for(b, bidirectional, backend, head_dim):
    return AttentionContext.build(b.segment_ids, b.span_ids, b.positions, requested=backend,
                                  bidirectional=bidirectional, head_dim=head_dim, theta=10000.0)


@pytest.mark.parametrize("mode", ["transfusion", "mar"])
def test_sdpa_matches_reference(mode):
    b, bidir = packed_ids(mode)
    bsz, t = b.tokens.shape
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(bsz, 4, t, 16, generator=g), torch.randn(bsz, 2, t, 16, generator=g), \
        torch.randn(bsz, 2, t, 16, generator=g)
    out = attend(q, k, v, ctx_for(b, bidir, "sdpa", 16))
    ref = reference_attention(q, k, v, masks.dense_mask(b.segment_ids, b.span_ids, bidir))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["transfusion", "discrete"])
def test_flex_forward_matches_sdpa_without_grad(mode):
    b, bidir = packed_ids(mode)
    bsz, t = b.tokens.shape
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(bsz, 4, t, 16, generator=g), torch.randn(bsz, 2, t, 16, generator=g),
               torch.randn(bsz, 2, t, 16, generator=g))
    with torch.no_grad():
        flex = attend(q, k, v, ctx_for(b, bidir, "flex", 16))
        ref = reference_attention(q, k, v, masks.dense_mask(b.segment_ids, b.span_ids, bidir))
    torch.testing.assert_close(flex, ref, atol=1e-4, rtol=1e-4)


def test_backend_selection_and_refusals():
    cpu = torch.device("cpu")
    assert select_backend("auto", cpu, True, grad=True) == "sdpa"
    assert select_backend("auto", cpu, True, grad=False) == "sdpa"  # per document
    assert select_backend("auto", cpu, False, grad=False) == "sdpa"
    with pytest.raises(ConfigError, match="no backward on CPU"):
        select_backend("flex", cpu, True, grad=True)
    with pytest.raises(ConfigError, match="bidirectional"):
        select_backend("flash", cpu, True, grad=False)
    with pytest.raises(ConfigError, match="CUDA"):
        select_backend("flash", cpu, False, grad=False)


def test_whole_model_agrees_across_backends_on_cpu():
    cfg = tiny_config("transfusion")
    model = tiny_model(cfg)
    b = packer(cfg).pack(documents(cfg), generator=torch.Generator().manual_seed(0))
    outs = {}
    for backend in ("sdpa", "flex"):
        model.cfg.attention = backend
        torch.manual_seed(0)
        with torch.no_grad():
            outs[backend] = model(b).loss
    torch.testing.assert_close(outs["flex"], outs["sdpa"], atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["flex", "flash"])
def test_gpu_backends_match_reference(backend):  # pragma: no cover - GPU only
    from model.attention import flash_available

    if backend == "flash" and not flash_available():
        pytest.skip("flash-attn not installed")
    b, bidir = packed_ids("mar")
    b = b.to("cuda")
    bsz, t = b.tokens.shape
    q, k, v = (torch.randn(bsz, 4, t, 16, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    k, v = k[:, :2], v[:, :2]
    out = attend(q, k, v, ctx_for(b, bidir, backend, 16))
    ref = reference_attention(q.float(), k.float(), v.float(), masks.dense_mask(b.segment_ids, b.span_ids, bidir))
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("mode", ["transfusion", "mar"])
def test_packed_documents_attend_in_rows_of_their_own_with_the_same_values_and_gradients(mode):
    cfg = tiny_config(mode, latent_size=4)
    docs = documents(cfg) + documents(cfg, seed=1) + documents(cfg, seed=2)
    b = packer(cfg).pack(docs, seq_len=160)  # several documents per row, and a padded tail
    bidir = mode == "transfusion"
    assert (b.segment_ids == 0).any()
    slots = masks.document_slots(b.segment_ids, b.span_ids, bidir)
    assert slots is not None and slots.length < b.tokens.shape[1]
    ctx = ctx_for(b, bidir, "sdpa", 16)
    assert ctx.slots is not None
    bsz, t = b.tokens.shape
    g = torch.Generator().manual_seed(2)
    q = torch.randn(bsz, 4, t, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(bsz, 2, t, 16, generator=g, requires_grad=True) for _ in range(2))
    out = attend(q, k, v, ctx)
    ref = reference_attention(q, k, v, masks.dense_mask(b.segment_ids, b.span_ids, bidir))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # bf16 on the CPU: short documents attend in fp32; the result is the reference's, rounded
    out16 = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), ctx)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), ref, atol=3e-2, rtol=3e-2)


def test_one_document_per_row_keeps_the_dense_mask():
    cfg = tiny_config("transfusion", latent_size=4)
    docs = documents(cfg)
    length = len(packer(cfg).encode(docs[0]).tokens)
    b = packer(cfg).pack(docs[:1] * 3, seq_len=length)
    assert masks.document_slots(b.segment_ids, b.span_ids, True) is None

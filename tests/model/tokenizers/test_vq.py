"""Tests for the vector quantiser: nearest code, straight-through, losses, usage, dead-code restarts."""

import math

import pytest
import torch

from model.tokenizers import ImageTokenizer, TokenizerConfig, evaluate, fit
from model.tokenizers.vq import VectorQuantizer, codebook_utilisation, perplexity


def test_codes_are_the_nearest_codebook_entries() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(32, 4)
    z = torch.randn(2, 4, 5, 5)
    z_q, codes, losses = vq(z)
    assert z_q.shape == (2, 4, 5, 5) and codes.shape == (2, 5, 5) and codes.dtype == torch.int64
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    ref = torch.cdist(flat, vq.codebook.weight).argmin(dim=1)
    assert torch.equal(codes.flatten(), ref)
    assert torch.allclose(z_q, vq.lookup(codes))
    assert set(losses) == {"vq", "commit"}
    assert losses["vq"].item() == pytest.approx(losses["commit"].item())
    assert losses["vq"].item() == pytest.approx(((z_q - z) ** 2).mean().item(), rel=1e-5)


def test_straight_through_and_loss_gradients_go_to_the_right_place() -> None:
    vq = VectorQuantizer(16, 4)
    z = torch.randn(1, 4, 3, 3, requires_grad=True)
    z_q, _, _ = vq(z)
    z_q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity gradient through quantisation
    assert vq.codebook.weight.grad is None  # the straight-through output does not train codes

    z.grad = None
    _, _, losses = vq(z)
    losses["vq"].backward()
    assert z.grad is None and vq.codebook.weight.grad.abs().sum() > 0  # codebook loss: codes only
    vq.codebook.weight.grad = None
    _, _, losses = vq(z)
    losses["commit"].backward()
    assert z.grad.abs().sum() > 0 and vq.codebook.weight.grad is None  # commitment: encoder only


def test_usage_is_a_buffer_updated_only_in_training() -> None:
    vq = VectorQuantizer(8, 2, usage_decay=0.5)
    assert "ema_usage" in vq.state_dict()
    z = torch.randn(1, 2, 4, 4)
    vq.eval()
    vq(z)
    assert vq.ema_usage.sum().item() == 0.0
    vq.train()
    _, codes, _ = vq(z)
    counts = torch.bincount(codes.flatten(), minlength=8).float()
    assert torch.allclose(vq.ema_usage, 0.5 * counts * 8 / 16)


def test_restart_reseeds_dead_codes_from_the_batch_and_revives_them() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(64, 4)
    with torch.no_grad():  # collapse: every code far from the data except code 0
        vq.codebook.weight.fill_(50.0)
        vq.codebook.weight[0] = 0.0
    z = torch.randn(4, 4, 8, 8)
    assert vq.restart_dead_codes(0.03).numel() == 0  # no batch seen yet: nothing to seed from
    vq.train()
    _, codes, _ = vq(z)
    before = codebook_utilisation(codes, 64)
    assert before == pytest.approx(1 / 64)
    revived = vq.restart_dead_codes(0.03)
    assert revived.numel() == 63 and 0 not in revived.tolist()
    assert (vq.ema_usage[revived] == 1.0).all()  # grace period
    pool = z.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest_pool_dist = torch.cdist(vq.codebook.weight[revived], pool).min(dim=1).values
    assert (nearest_pool_dist < 0.1).all()  # seeded at (noisy copies of) encoder outputs
    vq.eval()
    _, codes_after, _ = vq(z)
    assert codebook_utilisation(codes_after, 64) > 0.5


def _collapse_codebook(tok: ImageTokenizer) -> None:
    with torch.no_grad():
        tok.quantizer.codebook.weight.fill_(30.0)
        tok.quantizer.codebook.weight[0] = 0.0


def test_fit_restarts_raise_utilisation_of_a_collapsed_codebook() -> None:
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 16, 16, generator=g) * 2 - 1
    batches = [images[i : i + 16] for i in range(0, 64, 16)]
    results = {}
    for every in (0, 10):
        torch.manual_seed(0)
        cfg = TokenizerConfig(kind="vq", image_size=16, channels=8, vq_codebook_size=64, vq_dim=4, vq_restart_every=every)
        tok = ImageTokenizer(cfg)
        _collapse_codebook(tok)
        history = fit(tok, batches, steps=40)
        results[every] = evaluate(tok, images)
        restarted = sum(r.get("restarted", 0.0) for r in history)
        assert (restarted > 0) == (every > 0)
    assert results[0]["codebook_utilisation"] <= 2 / 64  # without restarts the far codes stay dead
    assert results[10]["codebook_utilisation"] > 0.25
    assert results[10]["perplexity"] > 4 * results[0]["perplexity"]


def test_utilisation_and_perplexity_helpers() -> None:
    uniform = torch.arange(16).repeat(4)
    assert codebook_utilisation(uniform, 16) == 1.0
    assert perplexity(uniform, 16) == pytest.approx(16.0)
    single = torch.zeros(100, dtype=torch.int64)
    assert codebook_utilisation(single, 16) == 1 / 16
    assert perplexity(single, 16) == pytest.approx(1.0)
    half = torch.tensor([0, 1] * 10)
    assert perplexity(half, 16) == pytest.approx(2.0)
    assert 1.0 < perplexity(torch.tensor([0, 0, 0, 1]), 4) < 2.0
    assert math.isfinite(perplexity(torch.tensor([3]), 4))

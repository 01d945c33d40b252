"""Tests for the KL tokenizer's diagonal Gaussian posterior."""

import pytest
import torch

from model.tokenizers.kl import LOGVAR_MAX, LOGVAR_MIN, DiagonalGaussian


def test_moments_split_into_mean_and_logvar() -> None:
    moments = torch.randn(2, 8, 4, 4)
    post = DiagonalGaussian(moments)
    assert post.mean.shape == (2, 4, 4, 4)
    assert post.logvar.shape == (2, 4, 4, 4)
    assert torch.equal(post.mean, moments[:, :4])
    assert torch.equal(post.mode(), post.mean)
    assert post.sample().shape == (2, 4, 4, 4)
    assert post.kl().shape == (2, 4, 4, 4)


def test_odd_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="even channel"):
        DiagonalGaussian(torch.randn(1, 3, 2, 2))


def test_logvar_is_clamped() -> None:
    mean = torch.zeros(1, 1, 1, 2)
    logvar = torch.tensor([[[[-1000.0, 1000.0]]]])
    post = DiagonalGaussian.from_mean_logvar(mean, logvar)
    assert post.logvar.min().item() == LOGVAR_MIN
    assert post.logvar.max().item() == LOGVAR_MAX
    assert torch.isfinite(post.std).all() and torch.isfinite(post.kl()).all()


def test_kl_is_zero_for_standard_normal_and_matches_closed_form() -> None:
    zero = DiagonalGaussian(torch.zeros(3, 4, 2, 2))
    assert torch.allclose(zero.kl(), torch.zeros(3, 2, 2, 2))
    mean, logvar = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    post = DiagonalGaussian.from_mean_logvar(mean, logvar)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    )
    assert torch.allclose(post.kl(), ref, atol=1e-5)
    assert post.kl_loss().item() == pytest.approx(ref.mean().item(), rel=1e-5)
    assert (post.kl() >= -1e-6).all()


def test_sample_has_the_posterior_statistics_and_is_reparameterised() -> None:
    mean = torch.full((1, 1, 200, 200), 2.0, requires_grad=True)
    logvar = torch.full((1, 1, 200, 200), float(torch.log(torch.tensor(0.25))), requires_grad=True)
    post = DiagonalGaussian.from_mean_logvar(mean, logvar)
    z = post.sample(torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(2.0, abs=0.02)
    assert z.std().item() == pytest.approx(0.5, abs=0.02)
    z.sum().backward()
    assert mean.grad is not None and torch.allclose(mean.grad, torch.ones_like(mean))
    assert logvar.grad is not None and logvar.grad.abs().sum() > 0


def test_sample_is_reproducible_with_a_generator() -> None:
    post = DiagonalGaussian(torch.randn(2, 4, 3, 3))
    a = post.sample(torch.Generator().manual_seed(7))
    b = post.sample(torch.Generator().manual_seed(7))
    assert torch.equal(a, b)

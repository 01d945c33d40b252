"""Tests for finite scalar quantisation: grid, vocab, index <-> code round trip, gradients."""

import math

import pytest
import torch

from model.tokenizers.fsq import FSQ


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3], [7], [4, 4, 4]])
def test_vocab_is_product_of_levels_and_index_code_round_trip(levels: list[int]) -> None:
    fsq = FSQ(levels)
    vocab = math.prod(levels)
    assert fsq.vocab_size == vocab and fsq.dim == len(levels)
    idx = torch.arange(vocab).view(1, vocab, 1)  # (B, h, w)
    codes = fsq.indices_to_codes(idx)  # (B, d, h, w)
    assert codes.shape == (1, len(levels), vocab, 1)
    assert codes.min() >= -1.0 and codes.max() <= 1.0
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    # every index maps to a distinct code vector
    assert torch.unique(codes[0, :, :, 0].t(), dim=0).shape[0] == vocab


def test_each_channel_takes_exactly_its_number_of_levels() -> None:
    levels = [8, 5, 3, 2]
    fsq = FSQ(levels)
    z = torch.linspace(-8, 8, 4001).view(1, 1, -1, 1).repeat(1, len(levels), 1, 1)  # (1, d, N, 1)
    z_q, codes = fsq(z)
    for i, level in enumerate(levels):
        values = torch.unique(z_q[0, i])
        assert values.numel() == level, (level, values)
    assert codes.shape == (1, 4001, 1)
    assert codes.min() >= 0 and codes.max() < fsq.vocab_size


def test_forward_codes_match_quantised_values_and_decode_back() -> None:
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(3, 4, 6, 6) * 3
    z_q, codes = fsq(z)
    assert z_q.shape == (3, 4, 6, 6) and codes.shape == (3, 6, 6) and codes.dtype == torch.int64
    assert torch.allclose(fsq.indices_to_codes(codes), z_q)
    # quantisation is idempotent on the grid: re-bounding is not applied to codes, indices are stable
    assert torch.equal(fsq.codes_to_indices(z_q), codes)


def test_straight_through_gradient_reaches_the_input() -> None:
    fsq = FSQ([8, 5, 5, 5])
    z = (torch.randn(2, 4, 3, 3) * 0.5).requires_grad_()
    z_q, _ = fsq(z)
    z_q.sum().backward()
    assert z.grad is not None and (z.grad > 0).all()  # tanh bounding has positive slope everywhere


def test_bad_levels_and_channels_are_rejected() -> None:
    with pytest.raises(ValueError):
        FSQ([])
    with pytest.raises(ValueError):
        FSQ([8, 1])
    with pytest.raises(ValueError, match="expects 4 channels"):
        FSQ([8, 5, 5, 5])(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="indices must lie"):
        FSQ([2, 2]).indices_to_codes(torch.tensor([[[4]]]))


def test_levels_are_not_saved_with_the_weights() -> None:
    # they come from the config; a state dict without them keeps saved files layout-independent
    assert FSQ([8, 5, 5, 5]).state_dict() == {}

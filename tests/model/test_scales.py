"""Next-scale prediction (VAR, model/scales.py): the scale decomposition, the packed layout, the
block-causal mask against brute force, and training."""

import pytest
import torch

from core.config import load_config
from core.errors import ConfigError, DataError
from model import batch as pb
from model import masks, scales
from model.batch import Document
from model.config import ModelConfig
from model.tokenizers.fsq import FSQ
from support.model_helpers import documents, fsq_pyramid, overfit, packer, tiny_config

VAR = {"var_scales": [1, 2, 4]}


def test_residual_scales_sum_to_the_latent_and_inputs_are_the_coarser_sum():
    latent = torch.randn(4, 8, 8)
    tokens = scales.residual_scales(latent, [1, 2, 4, 8])
    assert [tuple(t.shape) for t in tokens] == [(4, 1, 1), (4, 2, 2), (4, 4, 4), (4, 8, 8)]
    torch.testing.assert_close(scales.reconstruct(tokens, 8), latent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens[0][:, 0, 0], latent.mean((1, 2)))  # scale 1: the image's mean
    inputs = scales.scale_inputs(tokens, 8)
    assert torch.equal(inputs[0], torch.zeros(4, 1, 1))
    torch.testing.assert_close(inputs[2], scales.downsample(scales.reconstruct(tokens[:2], 8), 4))


def test_code_pyramid_requantises_and_keeps_the_finest_codes():
    fsq = FSQ([4, 4])
    codes = torch.randint(0, 16, (4, 4))
    pyramid = scales.code_pyramid(codes, [1, 2, 4], fsq.indices_to_codes, fsq.nearest_indices)
    assert torch.equal(pyramid[-1], codes) and [tuple(c.shape) for c in pyramid] == [(1, 1), (2, 2), (4, 4)]
    values = fsq.indices_to_codes(codes[None]).float()
    expected = fsq.nearest_indices(scales.downsample(values, 2))[0]
    assert torch.equal(pyramid[1], expected)
    assert scales.upsample_codes(torch.tensor([[1, 2], [3, 4]]), 4).tolist() == \
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_scale_positions_centre_each_cell_on_the_full_grid():
    assert scales.scale_positions(10, 1, 4).tolist() == [[10, 12, 12]]
    assert scales.scale_positions(0, 2, 4).tolist() == [[0, 1, 1], [0, 1, 3], [0, 3, 1], [0, 3, 3]]
    assert torch.equal(scales.scale_positions(0, 4, 4), pb.grid_positions(0, (1, 4, 4)))


@pytest.mark.parametrize("mode", ["mar", "discrete"])
def test_a_generated_image_is_one_span_per_scale(mode):
    cfg = tiny_config(mode, **VAR)
    doc = documents(cfg)[1]  # generate, caption "a red circle"
    p = packer(cfg)
    b = p.pack([doc])
    assert p.length(doc) == b.tokens.shape[1] == 4 + len(doc.text_ids) + 1 + 4 + 16
    assert b.span_grid.tolist() == [[1, 1, 1], [1, 2, 2], [1, 4, 4]]
    image = b.span_ids[0] > 0
    assert b.span_ids[0][image].tolist() == [1] + [2] * 4 + [3] * 16
    boi = int(torch.nonzero(b.tokens[0] == cfg.boi_id)[0])
    assert b.target_kind[0, boi] == pb.NO_LOSS  # [boi] predicts nothing: each block predicts its own scale
    assert b.positions[0, image][:, 0].eq(boi + 1).all()  # every scale on the image's t
    assert int(b.positions[0, int(torch.nonzero(b.tokens[0] == cfg.eoi_id)[0]), 0]) == boi + 1 + 4
    if mode == "mar":
        assert b.latent_loss.all() and b.latent_targets.shape == b.latents.shape == (21, 4)
        tokens = [b.latent_targets[:1], b.latent_targets[1:5], b.latent_targets[5:]]
        grids = [pb.unpatchify(t, (1, s, s), 1) for t, s in zip(tokens, (1, 2, 4))]
        torch.testing.assert_close(scales.reconstruct(grids, 4), torch.as_tensor(doc.latent), atol=1e-5, rtol=1e-5)
        assert torch.equal(b.latents[:1], torch.zeros(1, 4))  # block 1 knows nothing yet
    else:
        kinds, targets = b.target_kind[0, image], b.targets[0, image]
        assert kinds.eq(pb.IMAGE_LOSS).all()
        finest = torch.as_tensor(doc.scale_codes[-1]).flatten() + cfg.code_offset
        assert torch.equal(targets[5:], finest)  # each token's own code, not the next token's
        assert b.tokens[0, image][0] == cfg.boi_id
        assert torch.equal(b.tokens[0, image][5:].view(4, 4),
                           scales.upsample_codes(torch.as_tensor(doc.scale_codes[1]), 4) + cfg.code_offset)


def brute_force_block_causal(b):
    """Stated in scales, not spans: a token of an image sees every token of the same image whose
    scale is no finer than its own (these documents hold one image each, so "same image" is
    "same document, both image tokens"); everything else is causal within a document, and
    padding sees itself only."""
    bsz, t = b.segment_ids.shape
    out = torch.zeros(bsz, t, t, dtype=torch.bool)
    level = scales.token_levels(b.span_ids, b.span_grid, [1, 2, 4])
    for r in range(bsz):
        for q in range(t):
            for k in range(t):
                sq, sk = int(b.segment_ids[r, q]), int(b.segment_ids[r, k])
                if sq == 0:
                    out[r, q, k] = q == k
                elif sq != sk:
                    out[r, q, k] = False
                elif int(level[r, q]) >= 0 and int(level[r, k]) >= 0:
                    out[r, q, k] = int(level[r, k]) <= int(level[r, q])
                else:
                    out[r, q, k] = k <= q
    return out


@pytest.mark.parametrize("mode", ["mar", "discrete"])
def test_block_causal_mask_equals_brute_force(mode):
    cfg = tiny_config(mode, **VAR)
    b = packer(cfg).pack(documents(cfg) + documents(cfg, seed=1), seq_len=128)
    assert (b.segment_ids == 0).any() and b.tokens.shape[0] >= 2
    dense = masks.dense_mask(b.segment_ids, b.span_ids, cfg.bidirectional_images)
    assert torch.equal(dense, brute_force_block_causal(b))
    # and by example: the 2x2 block sees the 1x1 block and itself, not the 4x4 block
    row = 0
    spans = b.span_ids[row]
    first2 = int(torch.nonzero(spans == 2)[0])
    assert dense[row, first2, spans == 1].all() and dense[row, first2, spans == 2].all()
    assert not dense[row, first2, spans == 3].any()


@pytest.mark.parametrize("mode", ["mar", "discrete"])
def test_next_scale_overfits_text_understanding_and_images(mode):
    history, out = overfit(tiny_config(mode, **VAR), steps=40)
    assert all(out.counts[k] > 0 for k in ("text", "understanding", "image"))
    for part in ("loss", "text", "understanding", "image"):
        assert history[-1][part] < 0.6 * history[0][part], (part, history[0][part], history[-1][part])


def test_patch_size_two_scales_in_tokens():
    cfg = tiny_config("mar", latent_size=8, patch_size=2, var_scales=[1, 2, 4])
    b = packer(cfg).pack([Document("generate", [5], latent=torch.randn(4, 8, 8))])
    assert b.latents.shape == (21, 16) and b.span_grid[:, 1].tolist() == [1, 2, 4]


@pytest.mark.parametrize("overrides, message", [
    (["mode=transfusion", "var_scales=[1, 2, 4]", "latent_size=4"], "mode='mar'"),
    (["mode=mar", "var_scales=[1, 2]", "latent_size=4"], "must end at the full token grid"),
    (["mode=mar", "var_scales=[2, 1, 4]", "latent_size=4"], "increasing"),
    (["mode=mar", "var_scales=[1, 2, 4]", "latent_size=4", "mar_order=masked"], "mar_order"),
    (["mode=mar", "var_scales=[1, 2, 4]", "latent_size=4", "attention=flash"], "bidirectionally"),
])
def test_bad_scale_configs(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ModelConfig, None, overrides)


def test_bad_next_scale_documents_are_data_errors():
    cfg = tiny_config("discrete", **VAR)
    with pytest.raises(DataError, match="every scale"):
        packer(cfg).pack([Document("generate", [1], codes=torch.zeros(4, 4, dtype=torch.long))])
    codes = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(DataError, match="outside"):
        bad = fsq_pyramid(codes, cfg)
        bad[0] = torch.full((1, 1), 99)
        packer(cfg).pack([Document("generate", [1], codes=codes, scale_codes=bad)])
    mar = tiny_config("mar", **VAR)
    with pytest.raises(DataError, match="video"):
        packer(mar).pack([Document("generate", [1], latent=torch.zeros(2, 4, 4, 4))])

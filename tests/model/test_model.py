import pytest
import torch

from model import batch as pb
from model.batch import Document
from model.rope import apply_rotary, rotary_angles
from support.model_helpers import documents, overfit, packer, tiny_config, tiny_model


@pytest.mark.parametrize("mode", ["transfusion", "mar", "discrete"])
def test_every_part_of_the_loss_falls_when_overfitting(mode):
    history, out = overfit(tiny_config(mode))
    assert set(out.losses) == {"text", "understanding", "image"}
    assert all(out.counts[k] > 0 for k in out.losses)
    first, last = history[0], history[-1]
    for part in ("loss", "text", "understanding", "image"):
        assert last[part] < 0.6 * first[part], (part, first[part], last[part])


@pytest.mark.parametrize("overrides", [
    {"mode": "transfusion", "conv_adapter": True, "adapter_channels": 16, "patch_size": 2},
    {"mode": "mar", "mar_order": "random"},
    {"mode": "mar", "mar_order": "masked"},
    {"mode": "discrete", "patch_positions": True},
])
def test_variants_train(overrides):
    history, _ = overfit(tiny_config(**overrides), steps=25)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]


@pytest.mark.parametrize("mode", ["transfusion", "mar", "discrete"])
def test_videos_train_with_3d_positions(mode):
    history, out = overfit(tiny_config(mode), steps=15, video=True)
    assert out.counts["image"] > 0 and history[-1]["loss"] < history[0]["loss"]


def test_meta_build_then_init_weights_gives_a_working_model():
    cfg = tiny_config("mar")
    model = tiny_model(cfg)
    assert not any(p.is_meta for p in model.parameters())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    out = model(packer(cfg).pack(documents(cfg)))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # MAR's head starts as the identity residual with a zero output: its output layer still learns
    assert model.mar_head.output.weight.grad.abs().sum() > 0
    again = tiny_model(cfg)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_text_positions_reduce_to_plain_rope():
    t, d = 10, 12
    pos = torch.arange(t)
    rotation = rotary_angles(pos[None, :, None].expand(1, t, 3), d, 10000.0)
    x = torch.randn(1, 1, t, d)
    inv = 10000.0 ** (-torch.arange(d // 2) / (d // 2))
    ang = pos[:, None] * inv  # (T, d/2): pair j of token p turns by p * inv[j]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    ref = torch.stack([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], -1).flatten(-2)
    torch.testing.assert_close(apply_rotary(x, rotation), ref)
    # relative: the score between two rotated vectors depends only on their distance
    q, k = torch.randn(d), torch.randn(d)
    rot = lambda v, p: apply_rotary(v.view(1, 1, 1, d), rotary_angles(torch.full((1, 1, 3), p), d, 10000.0))  # noqa: E731
    assert torch.allclose((rot(q, 7) * rot(k, 3)).sum(), (rot(q, 14) * rot(k, 10)).sum(), atol=1e-4)


def test_dropping_children_for_pipeline_stages():
    cfg = tiny_config("discrete")
    model = tiny_model(cfg)
    batch = packer(cfg).pack(documents(cfg))
    h = model.embed(batch.tokens, batch.modality, None, batch.span_grid)
    del model.backbone.layers["1"]  # a stage that owns layer 0 only
    ctx = model.context(batch.segment_ids, batch.span_ids, batch.positions)
    assert model.trunk(h, ctx).shape == h.shape


@pytest.mark.parametrize("mode", ["transfusion", "mar"])
def test_every_parameter_gets_a_gradient_even_from_a_batch_without_images(mode):
    """FSDP and DDP need a gradient for every parameter on every rank: a rank whose batch has
    only text (or only understanding) must still give the adapters and image heads one (zero)."""
    cfg = tiny_config(mode)
    model = tiny_model(cfg)
    text_only = packer(cfg).pack([Document("text", [5, 6, 7, 8]), Document("text", [9, 10])])
    model(text_only).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(float(p.grad.abs().sum()) == 0 for p in model.latent_in.parameters())


@pytest.mark.parametrize("overrides", [
    {"mode": "transfusion", "conv_adapter": True, "adapter_channels": 16, "patch_size": 2, "patch_positions": True},
    {"mode": "mar", "mar_order": "random"},
    {"mode": "mar", "mar_order": "masked"},
    {"mode": "discrete"},
    {"mode": "mar", "var_scales": [1, 2, 4]},
    {"mode": "discrete", "var_scales": [1, 2, 4]},
])
@pytest.mark.parametrize("kind", ["text", "understand"])
def test_every_module_runs_on_every_batch(overrides, kind):
    """ZeRO-3 gathers a module's parameters when it is called: each rank must call every module
    every micro-batch, a batch without images (or, understanding only, without generated ones)
    included, or the other ranks hang."""
    cfg = tiny_config(**overrides)
    model = tiny_model(cfg)
    called = set()
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.register_forward_pre_hook(lambda m, args, name=name: called.add(name))
    image = [doc for doc in documents(cfg) if doc.task == "understand"][0]
    docs = [image if kind == "understand" else Document("text", [5, 6, 7, 8]), Document("text", [9, 10])]
    model(packer(cfg).pack(docs)).loss.backward()
    owners = {n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    assert owners - called == set()


def test_patch_positions_tell_identical_patches_apart():
    """The same latent at every patch of an image embeds identically without patch_positions
    (rotary positions act later, in attention) and differently, place by place, with them."""
    for positions in (False, True):
        cfg = tiny_config("transfusion", patch_positions=positions)
        model = tiny_model(cfg)
        doc = Document("understand", [], latent=torch.ones(cfg.latent_channels, cfg.latent_size, cfg.latent_size))
        batch = packer(cfg).pack([doc])
        h = model.embed_batch(batch, batch.latents)[batch.latent_mask]
        distinct = len({tuple(row.tolist()) for row in h.detach().round(decimals=5)})
        assert distinct == (h.shape[0] if positions else 1), (positions, distinct)


def test_masked_mar_hides_what_it_masks_and_predicts_it_in_place():
    """Masked mar: a generated image's masked latents enter as the mask embedding (changing them
    changes no hidden state), understanding images stay whole, no token predicts the next image
    token, and image tokens see their whole image."""
    cfg = tiny_config("mar", mar_order="masked")
    model = tiny_model(cfg)
    batch = packer(cfg).pack(documents(cfg), generator=torch.Generator().manual_seed(0))
    generated = batch.latent_loss
    assert bool(generated.any()) and not bool((batch.target_kind == pb.IMAGE_LOSS).any())
    hidden = lambda b: model.trunk(model.embed_batch(b, b.latents), model.batch_context(b))  # noqa: E731
    before = hidden(batch)
    batch.latents = torch.where(generated[:, None], torch.randn_like(batch.latents), batch.latents)
    torch.testing.assert_close(hidden(batch), before)
    assert model.bidirectional

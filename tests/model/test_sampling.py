import pytest
import torch

from model.flow import guided, integrate
from model.sampling import caption, generate_images, generate_text, pick
from support.model_helpers import BOS, EOS, documents, packer, tiny_config, tiny_model


@pytest.fixture(scope="module")
def models():
    """One briefly trained tiny model per mode (trained so outputs are not uniform noise)."""
    out = {}
    variants = [("transfusion", {}), ("mar", {}), ("discrete", {}), ("mar-random", {"mar_order": "random"}),
                ("transfusion-positions", {"patch_positions": True}),
                ("mar-random-positions", {"mar_order": "random", "patch_positions": True}),
                ("mar-masked", {"mar_order": "masked"}), ("mar-var", {"var_scales": [1, 2, 4]}),
                ("discrete-var", {"var_scales": [1, 2, 4]})]
    for mode, extra in variants:
        cfg = tiny_config(mode.split("-")[0], **extra)
        model = tiny_model(cfg)
        batch = packer(cfg).pack(documents(cfg), generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(10):
            loss = model(batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[mode] = model.eval()
    return out


CAPTIONS = [list(b"a red circle"), list(b"two")]


def test_pick_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    assert pick(logits).item() == 1
    g = torch.Generator().manual_seed(0)
    assert {pick(logits, 1.0, top_k=1, generator=g).item() for _ in range(20)} == {1}
    assert {pick(logits, 1.0, top_p=0.01, generator=g).item() for _ in range(20)} == {1}
    assert {pick(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)} == {1, 3}
    # probabilities 0.644, 0.237, 0.087, 0.032: top_p 0.85 keeps exactly the top two
    assert {pick(logits, 1.0, top_p=0.85, generator=g).item() for _ in range(200)} == {1, 3}


def test_text_is_seeded_and_cache_matches_recompute(models):
    model = models["mar"]
    prompts = [[BOS, *b"hello"], [BOS, *b"a"]]
    greedy = generate_text(model, prompts, 8, EOS)
    assert greedy == generate_text(model, prompts, 8, EOS, use_cache=False)
    sampled = generate_text(model, prompts, 8, EOS, temperature=1.0, top_k=50, seed=3)
    assert sampled == generate_text(model, prompts, 8, EOS, temperature=1.0, top_k=50, seed=3, use_cache=False)
    assert sampled != generate_text(model, prompts, 8, EOS, temperature=1.0, top_k=50, seed=4)
    assert all(len(ids) <= 8 for ids in sampled)


@pytest.mark.parametrize("mode", ["transfusion", "mar", "mar-random", "discrete", "transfusion-positions",
                                  "mar-random-positions", "mar-masked", "mar-var", "discrete-var"])
def test_image_generation_is_seeded_cached_and_cfg1_is_conditional(models, mode):
    model = models[mode]
    kwargs = dict(steps=4, seed=1, temperature=1.0)
    first = generate_images(model, CAPTIONS, BOS, **kwargs)
    size = model.cfg.latent_size
    discrete = model.cfg.mode == "discrete"
    expected = (2, size, size) if discrete else (2, 4, size, size)
    assert tuple(first.shape) == expected
    assert torch.equal(first, generate_images(model, CAPTIONS, BOS, **kwargs))  # seeded
    assert not torch.equal(first, generate_images(model, CAPTIONS, BOS, **(kwargs | {"seed": 2})))
    uncached = generate_images(model, CAPTIONS, BOS, use_cache=False, **kwargs)
    guided_at_1 = generate_images(model, CAPTIONS, BOS, cfg_scale=1.0, **kwargs)
    if discrete:
        assert torch.equal(first, uncached) and torch.equal(first, guided_at_1)
    else:
        torch.testing.assert_close(first, uncached, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(first, guided_at_1, atol=1e-4, rtol=1e-4)
    # a real guidance scale changes the result
    assert not torch.allclose(first.float(), generate_images(model, CAPTIONS, BOS, cfg_scale=4.0, **kwargs).float())


def test_transfusion_heun_and_video(models):
    model = models["transfusion"]
    video = generate_images(model, CAPTIONS[:1], BOS, grid=(2, 4, 4), steps=3, method="heun")
    assert video.shape == (1, 2, 4, 4, 4) and torch.isfinite(video).all()


@pytest.mark.parametrize("mode", ["transfusion", "discrete", "transfusion-positions", "mar-masked", "mar-var",
                                  "discrete-var"])
def test_captioning_cached_matches_uncached(models, mode):
    model = models[mode]
    cfg = model.cfg
    images = (torch.randint(0, cfg.codebook_size, (2, 4, 4)) if cfg.mode == "discrete" else torch.randn(2, 4, 4, 4))
    ids = caption(model, images, BOS, EOS, max_new_tokens=6)
    assert ids == caption(model, images, BOS, EOS, max_new_tokens=6, use_cache=False)
    assert len(ids) == 2 and all(i < cfg.text_vocab_size for row in ids for i in row)


def test_ode_and_guidance_helpers():
    x0 = torch.zeros(3, 2)
    # constant velocity: both solvers land exactly at x0 + v
    for method in ("euler", "heun"):
        assert torch.allclose(integrate(lambda x, t: torch.ones_like(x), x0, 5, method), torch.ones(3, 2))
    # v = x1 - x0 for a straight path from noise to data is integrated exactly in one step
    data = torch.randn(3, 2)
    assert torch.allclose(integrate(lambda x, t: (data - x) / (1 - t[..., None]), x0, 1), data)
    c, u = torch.randn(4), torch.randn(4)
    assert torch.equal(guided(c, u, 1.0), c)
    assert torch.allclose(guided(c, u, 3.0), u + 3 * (c - u))


@pytest.mark.parametrize("n, steps", [(16, 8), (16, 1), (3, 8), (64, 5)])
def test_masked_mar_reveals_every_token_once_more_each_pass(n, steps):
    from model.sampling.images import revealed_after

    known = revealed_after(n, steps)
    assert known[-1] == n and len(known) == min(n, steps)
    assert all(b > a for a, b in zip([0, *known], known))
    if len(known) > 2:  # the cosine schedule: few tokens first, more later
        assert known[0] <= known[-1] - known[-2]

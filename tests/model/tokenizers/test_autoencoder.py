"""Tests for ImageTokenizer: config validation, shapes, budgets, video, and short training runs."""

import math

import numpy as np
import pytest
import torch

from core.errors import ConfigError, DataError
from model.tokenizers import ImageTokenizer, TokenizerConfig, evaluate, fit


def make_shapes(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """1-3 solid coloured squares/circles on black, (n, 3, size, size) in [-1, 1]."""
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, size, size, 3), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            color = rng.uniform(0.2, 1.0, 3)
            r = rng.integers(3, size // 4 + 1)
            cy, cx = rng.integers(r, size - r, 2)
            if rng.random() < 0.5:
                mask = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
            else:
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            imgs[i][mask] = color
    return torch.from_numpy(imgs).permute(0, 3, 1, 2) * 2 - 1


def tiny(kind: str, **kw) -> ImageTokenizer:
    torch.manual_seed(0)
    return ImageTokenizer(TokenizerConfig(kind=kind, image_size=16, channels=8, **kw)).eval()


# ---------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value, match",
    [
        ("downsample", 3, r"tokenizer\.downsample.*power of two"),
        ("downsample", 1, r"tokenizer\.downsample.*power of two"),
        ("downsample", 64, r"tokenizer\.downsample.*must divide tokenizer\.image_size"),
        ("image_size", 0, r"tokenizer\.image_size"),
        ("channels", 12, r"tokenizer\.channels.*multiple of 8"),
        ("fsq_levels", [], r"tokenizer\.fsq_levels.*non-empty"),
        ("fsq_levels", [8, 1, 5], r"tokenizer\.fsq_levels.*>= 2"),
        ("vq_codebook_size", 1, r"tokenizer\.vq_codebook_size"),
        ("kl_weight", -1.0, r"tokenizer\.kl_weight"),
        ("vq_usage_decay", 1.0, r"tokenizer\.vq_usage_decay"),
        ("vq_restart_every", -5, r"tokenizer\.vq_restart_every"),
    ],
)
def test_config_validation_names_the_field(field: str, value, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TokenizerConfig(**{field: value}).validate()


def test_config_dict_round_trip_and_unknown_keys() -> None:
    cfg = TokenizerConfig(kind="fsq", fsq_levels=[7, 5, 5])
    d = cfg.to_dict()
    assert d["fsq_levels"] == [7, 5, 5] and d["kind"] == "fsq"
    assert TokenizerConfig.from_dict(d) == cfg
    with pytest.raises(ConfigError, match=r"unknown key 'tokenizer\.codebook'.*valid keys"):
        TokenizerConfig.from_dict({"kind": "vq", "codebook": 512})
    with pytest.raises(ConfigError, match=r"tokenizer\.kind='ae' is not valid; choose one of: kl, vq, fsq"):
        TokenizerConfig.from_dict({"kind": "ae"})
    with pytest.raises(ConfigError, match=r"tokenizer\.image_size must be an integer"):
        TokenizerConfig.from_dict({"image_size": "32"})


def test_defaults_give_an_8x8_grid_from_32x32() -> None:
    cfg = TokenizerConfig().validate()
    assert (cfg.image_size, cfg.downsample, cfg.latent_size, cfg.num_downsamples) == (32, 4, 8, 2)


# ---------------------------------------------------------------------------------- shapes
def test_kl_shapes_losses_and_budget() -> None:
    tok = tiny("kl", latent_channels=4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = tok.encode(x)
    assert out.mean.shape == out.logvar.shape == out.latent.shape == (2, 4, 4, 4)
    assert out.codes is None
    assert out.sample().shape == (2, 4, 4, 4)
    assert tok.decode(out.latent).shape == (2, 3, 16, 16)
    assert tok.latent_shape() == (4, 4, 4) and tok.vocab_size is None
    recon, losses = tok(x)
    assert recon.shape == x.shape and set(losses) == {"recon", "kl", "total"}
    assert losses["total"].item() == pytest.approx(losses["recon"].item() + 1e-4 * losses["kl"].item(), rel=1e-5)
    # eval mode decodes the mean: deterministic
    assert torch.equal(tok(x)[0], tok(x)[0])
    assert torch.allclose(tok(x)[0], tok.decode(out.mean), atol=1e-6)
    budget = tok.info_budget()
    assert budget == {"kind": "kl", "latent_shape": (4, 4, 4), "values": 64, "dtype": "float32", "bits_per_image": 64 * 32}
    with pytest.raises(DataError, match="continuous"):
        tok.decode_codes(torch.zeros(1, 4, 4, dtype=torch.int64))


@pytest.mark.parametrize("kind, vocab, dim", [("vq", 64, 4), ("fsq", 8 * 5 * 5 * 5, 4)])
def test_discrete_shapes_losses_and_budget(kind: str, vocab: int, dim: int) -> None:
    tok = tiny(kind, vq_codebook_size=64, vq_dim=4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = tok.encode(x)
    assert out.codes.shape == (2, 4, 4) and out.codes.dtype == torch.int64
    assert out.latent.shape == (2, dim, 4, 4) and out.mean is None
    assert 0 <= out.codes.min() and out.codes.max() < vocab
    assert torch.allclose(tok.decode_codes(out.codes), tok.decode(out.latent), atol=1e-5)
    assert tok.latent_shape() == (4, 4) and tok.vocab_size == vocab
    recon, losses = tok(x)
    assert recon.shape == x.shape
    assert set(losses) == ({"recon", "vq", "commit", "total"} if kind == "vq" else {"recon", "total"})
    budget = tok.info_budget()
    assert budget["tokens"] == 16 and budget["vocab"] == vocab and budget["kind"] == kind
    assert budget["bits_per_image"] == pytest.approx(16 * math.log2(vocab))
    with pytest.raises(DataError, match=r"codes must lie in \[0, "):
        tok.decode_codes(torch.full((1, 4, 4), vocab))
    # re-quantising code vectors finds the codes again; an average lands on a valid code
    assert torch.equal(tok.latent_to_codes(tok.codes_to_latent(out.codes)), out.codes)
    mean = tok.latent_to_codes(tok.codes_to_latent(out.codes).mean((2, 3), keepdim=True))
    assert mean.shape == (2, 1, 1) and 0 <= int(mean.min()) and int(mean.max()) < vocab


def test_bad_image_inputs_say_what_to_do() -> None:
    tok = tiny("kl")
    with pytest.raises(DataError, match=r"\(B, 3, H, W\)"):
        tok.encode(torch.zeros(3, 16, 16))
    with pytest.raises(DataError, match="not divisible by tokenizer.downsample"):
        tok.encode(torch.zeros(1, 3, 18, 18))
    with pytest.raises(DataError, match="float"):
        tok.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


# ---------------------------------------------------------------------------------- video
@pytest.mark.parametrize("kind", ["kl", "vq", "fsq"])
def test_video_keeps_time_axis_and_matches_per_frame(kind: str) -> None:
    tok = tiny(kind, vq_codebook_size=64, vq_dim=4)
    assert tok.temporal_compression == 1
    frames = torch.rand(2, 3, 3, 16, 16) * 2 - 1  # (B, T, 3, H, W)
    out = tok.encode_video(frames)
    c = tok.latent_channels
    assert out.latent.shape == (2, 3, c, 4, 4)
    for t in range(3):
        ref = tok.encode(frames[:, t])
        assert torch.allclose(out.latent[:, t], ref.latent, atol=1e-5)
        if kind == "kl":
            assert torch.allclose(out.logvar[:, t], ref.logvar, atol=1e-5)
        else:
            assert torch.equal(out.codes[:, t], ref.codes)
    video = tok.decode_video(out.latent)
    assert video.shape == frames.shape
    assert torch.allclose(video[:, 1], tok.decode(out.latent[:, 1]), atol=1e-5)
    if kind != "kl":
        assert out.codes.shape == (2, 3, 4, 4)
        assert torch.allclose(tok.decode_video(out.codes), video, atol=1e-5)


# ---------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def shapes_data() -> tuple[torch.Tensor, torch.Tensor]:
    return make_shapes(1024, seed=1), make_shapes(256, seed=2)


# Floors measured with margin: 200 steps, batch 32, channels 16 reach 18.7-18.9 dB for every kind
# (2 threads, ~15 s each); the trivial baseline (the mean training image) is 11.8 dB.
@pytest.mark.parametrize("kind", ["kl", "vq", "fsq"])
def test_short_fit_lowers_loss_and_beats_trivial_baseline(kind: str, shapes_data) -> None:
    torch.set_num_threads(2)
    train, test = shapes_data
    torch.manual_seed(0)
    tok = ImageTokenizer(TokenizerConfig(kind=kind, channels=16))
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield train[torch.randint(0, len(train), (32,), generator=g)]

    seen: list[int] = []
    history = fit(tok, batches(), steps=200, on_step=lambda step, rec: seen.append(step))
    assert seen == list(range(200)) and len(history) == 200
    assert not tok.training
    first = np.mean([h["recon"] for h in history[:10]])
    last = np.mean([h["recon"] for h in history[-10:]])
    assert last < 0.5 * first, (first, last)

    baseline_img = train.mean(dim=0, keepdim=True)
    baseline_psnr = 10 * math.log10(1.0 / float(((baseline_img - test) / 2).pow(2).mean()))
    metrics = evaluate(tok, test)
    assert metrics["psnr"] > baseline_psnr + 4.0, (metrics, baseline_psnr)
    assert metrics["psnr"] > 16.0, metrics
    if kind != "kl":
        assert metrics["codebook_utilisation"] > 0.05 and metrics["perplexity"] > 20, metrics


def test_fit_rejects_a_finite_iterator_that_runs_out() -> None:
    tok = tiny("fsq")
    one_shot = iter([torch.zeros(2, 3, 16, 16)])
    with pytest.raises(DataError, match="ran out"):
        fit(tok, one_shot, steps=3)
    with pytest.raises(ConfigError, match="steps"):
        fit(tok, [torch.zeros(2, 3, 16, 16)], steps=0)

"""A diffusers AutoencoderKL from a local folder (a small random one saved here: nothing is ever
downloaded) works through the same loader, fingerprint and prep path as nodd's own tokenizers."""

import pytest
import torch

from core.errors import ConfigError
from model.tokenizers import image_tokenizer_fingerprint, is_diffusers_vae, load_image_tokenizer

diffusers = pytest.importorskip("diffusers", reason="pip install 'nodd[diffusers]'")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
    )
    path = tmp_path_factory.mktemp("sd_vae")
    vae.save_pretrained(str(path))
    return path


def test_load_encode_decode(vae_dir):
    assert is_diffusers_vae(vae_dir)
    vae = load_image_tokenizer(vae_dir, image_size=32)
    assert vae.config.kind == "kl" and vae.latent_shape() == (4, 8, 8)
    out = vae.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert out.mean.shape == (2, 4, 8, 8) and out.logvar.shape == (2, 4, 8, 8)
    assert vae.decode(out.mean).shape == (2, 3, 32, 32)
    video = vae.encode_video(torch.rand(1, 3, 3, 32, 32))
    assert video.mean.shape == (1, 3, 4, 8, 8)


def test_fingerprint_follows_the_weights(vae_dir, tmp_path):
    import shutil

    first = image_tokenizer_fingerprint(vae_dir)
    assert first == image_tokenizer_fingerprint(vae_dir) and len(first) == 64
    copy = tmp_path / "copy"
    shutil.copytree(vae_dir, copy)
    weights = copy / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 1
    weights.write_bytes(bytes(data))
    assert image_tokenizer_fingerprint(copy) != first


def test_prep_with_a_diffusers_vae(vae_dir, tmp_path):
    from core.config import load_config
    from data_prep import schema
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep
    from data_prep.shards import verify_shards

    cfg = load_config(PrepConfig, None, [f"out_dir={tmp_path / 'o'}", f"tokenizer.path={vae_dir}", "source.limit=6",
                                         "use_ray=false"])
    manifest = run_prep(cfg)
    assert manifest["tokenizer"]["config"]["source"] == "diffusers"
    assert schema.decode_latent(next(schema.iter_rows(cfg.out_dir)))[0].shape == (4, 8, 8)
    assert verify_shards(cfg.out_dir, str(vae_dir)) == []


def test_image_size_mismatch_with_a_nodd_tokenizer(tmp_path):
    from model.tokenizers import ImageTokenizer, TokenizerConfig, save_tokenizer

    save_tokenizer(ImageTokenizer(TokenizerConfig(channels=8)), tmp_path)
    with pytest.raises(ConfigError, match="trained on 32px images but image.size=64"):
        load_image_tokenizer(tmp_path, image_size=64)

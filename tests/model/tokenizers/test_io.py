"""Tests for saving / loading image tokenizers, fingerprints, and the diffusers VAE error path."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import ConfigError, DataError
from model.tokenizers import (
    ImageTokenizer,
    TokenizerConfig,
    load_diffusers_vae,
    load_tokenizer,
    save_tokenizer,
    tokenizer_fingerprint,
)


def tiny(kind: str) -> ImageTokenizer:
    torch.manual_seed(0)
    tok = ImageTokenizer(TokenizerConfig(kind=kind, image_size=16, channels=8, vq_codebook_size=32, vq_dim=4))
    if kind == "vq":  # non-trivial usage buffer, so it is part of what round-trips
        tok.train()
        tok(torch.rand(2, 3, 16, 16) * 2 - 1)
    return tok.eval()


@pytest.mark.parametrize("kind", ["kl", "vq", "fsq"])
def test_round_trip_gives_identical_outputs_and_fingerprint(kind: str, tmp_path: Path) -> None:
    tok = tiny(kind)
    fp = save_tokenizer(tok, tmp_path / "tok")
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [
        "fingerprint.txt", "tokenizer.safetensors", "tokenizer_config.json"
    ]
    meta = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert meta["format_version"] == 1 and meta["config"] == tok.config.to_dict()

    loaded = load_tokenizer(tmp_path / "tok")
    assert not loaded.training and loaded.config == tok.config
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    a, b = tok.encode(x), loaded.encode(x)
    assert torch.equal(a.latent, b.latent)
    assert torch.equal(tok.decode(a.latent), loaded.decode(b.latent))
    if kind != "kl":
        assert torch.equal(a.codes, b.codes)
    for k, v in tok.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k

    assert tokenizer_fingerprint(tmp_path / "tok") == fp
    assert tokenizer_fingerprint(loaded) == fp
    assert save_tokenizer(loaded, tmp_path / "again") == fp  # deterministic, path-independent


def test_fingerprint_depends_on_weights_and_config_not_file_layout(tmp_path: Path) -> None:
    tok = tiny("kl")
    fp = save_tokenizer(tok, tmp_path / "a")
    weights = tmp_path / "a" / "tokenizer.safetensors"
    # rewrite the same tensors with different metadata and insertion order: same fingerprint
    tensors = load_file(str(weights))
    save_file(dict(reversed(list(tensors.items()))), str(weights), metadata={"note": "rewritten"})
    assert tokenizer_fingerprint(tmp_path / "a") == fp
    load_tokenizer(tmp_path / "a")

    other = tiny("kl")
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert tokenizer_fingerprint(other) != fp
    changed_cfg = ImageTokenizer(TokenizerConfig(kind="kl", image_size=16, channels=8, kl_weight=1e-3))
    changed_cfg.load_state_dict(tok.state_dict())
    assert tokenizer_fingerprint(changed_cfg) != fp


def test_modified_weight_file_is_detected(tmp_path: Path) -> None:
    save_tokenizer(tiny("vq"), tmp_path / "t")
    weights = tmp_path / "t" / "tokenizer.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 0.5
    save_file(tensors, str(weights))
    with pytest.raises(DataError, match=r"tokenizer at .* is corrupt or was modified"):
        load_tokenizer(tmp_path / "t")
    with pytest.raises(DataError, match="corrupt or was modified"):
        tokenizer_fingerprint(tmp_path / "t")


def test_flipped_bytes_and_edited_config_are_detected(tmp_path: Path) -> None:
    save_tokenizer(tiny("fsq"), tmp_path / "t")
    weights = tmp_path / "t" / "tokenizer.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0xFF  # inside the last tensor's data
    weights.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt or was modified"):
        load_tokenizer(tmp_path / "t")

    save_tokenizer(tiny("fsq"), tmp_path / "c")
    cfg_path = tmp_path / "c" / "tokenizer_config.json"
    meta = json.loads(cfg_path.read_text())
    meta["config"]["fsq_levels"] = [8, 5, 5, 6]
    cfg_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="corrupt or was modified"):
        load_tokenizer(tmp_path / "c")

    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="corrupt or was modified"):
        load_tokenizer(tmp_path / "t")


def test_missing_directory_or_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no tokenizer directory at .*nodd tokenizer train --config configs/tokenizer/shapes_kl\.toml"):
        load_tokenizer(tmp_path / "nope")
    save_tokenizer(tiny("kl"), tmp_path / "t")
    (tmp_path / "t" / "fingerprint.txt").unlink()
    with pytest.raises(DataError, match=r"missing \['fingerprint.txt'\].*nodd tokenizer train"):
        load_tokenizer(tmp_path / "t")


def test_diffusers_missing_raises_config_error_with_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail even if installed
    with pytest.raises(ConfigError, match=r"pip install 'nodd\[diffusers\]'"):
        load_diffusers_vae(tmp_path)

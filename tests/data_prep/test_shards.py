"""`nodd shards verify` catches every kind of damage, and says what it found."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_config
from data_prep.config import PrepConfig
from data_prep.prep import run_prep
from data_prep.shards import verify_shards


@pytest.fixture
def shards(tmp_path, tiny_tokenizers) -> Path:
    cfg = load_config(PrepConfig, None, [f"out_dir={tmp_path / 'shards'}", f"tokenizer.path={tiny_tokenizers['kl']}",
                                         "source.limit=30", "shard_size=10", "use_ray=false"])
    run_prep(cfg)
    return Path(cfg.out_dir)


def verify_cli(path, *extra):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "shards", "verify", str(path), *extra],
                          capture_output=True, text=True)


def test_good_shards_pass(shards, tiny_tokenizers):
    assert verify_shards(shards, str(tiny_tokenizers["kl"])) == []
    result = verify_cli(shards)
    assert result.returncode == 0 and "30 samples in 3 shards verified" in result.stdout


def test_flipped_byte_is_caught(shards):
    path = shards / "shard-000001.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = verify_shards(shards)
    assert len(problems) == 1 and "shard-000001.parquet: sha256 differs" in problems[0]
    result = verify_cli(shards)
    assert result.returncode == 1 and "FAIL shard-000001.parquet" in result.stdout


def test_missing_and_extra_shards(shards):
    shutil.move(shards / "shard-000002.parquet", shards / "shard-000007.parquet")
    problems = verify_shards(shards)
    assert any("shard-000002.parquet: missing" in p for p in problems)
    assert any("shard-000007.parquet: shard not listed" in p for p in problems)


def test_wrong_tokenizer_is_caught(shards, tiny_tokenizers):
    problems = verify_shards(shards, str(tiny_tokenizers["fsq"]))
    assert len(problems) == 1 and "fingerprint" in problems[0]
    assert verify_cli(shards, "--tokenizer", str(tiny_tokenizers["fsq"])).returncode == 1


def test_manifest_edits_are_caught(shards):
    import json

    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][0]["rows"] = 11
    manifest["num_samples"] = 31
    (shards / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_shards(shards)
    assert any("10 rows, manifest says 11" in p for p in problems)

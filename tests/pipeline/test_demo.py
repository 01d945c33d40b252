"""The demo end to end on a small budget: tokenizers (KL and caption BPE), Ray prep of images and videos, verified
shards, decoded PNG and mp4 (the same code `make demo` runs with larger numbers)."""

import json
from pathlib import Path

import pytest

from data_prep.shards import verify_shards
from pipeline.demo import run_demo

pytestmark = pytest.mark.ray


def test_demo_small(tmp_path, local_ray, capsys):
    results = run_demo(tmp_path / "demo", samples=64, tokenizer_steps=10, train_steps=3, nproc=2, eval_images=4,
                       eval_per_prompt=1, eval_steps=2, clips=32)
    assert results["shapes"]["samples"] == 64 and results["moving_shapes"]["samples"] == 32
    for name in ("shapes", "moving_shapes"):
        assert verify_shards(results[name]["shards"]) == []
    assert Path(results["shapes"]["png"]).stat().st_size > 0
    # captions are tokenised by the demo's BPE, in the shards and in training
    bpe = tmp_path / "demo" / "tokenizer_bpe" / "tokenizer.json"
    manifest = json.loads((Path(results["shapes"]["shards"]) / "manifest.json").read_text())
    assert bpe.is_file() and manifest["text_tokenizer"]["spec"] == str(bpe)
    assert Path(results["moving_shapes"]["mp4"]).stat().st_size > 0
    assert "nodd demo finished" in capsys.readouterr().out
    # then 3 steps on 2 processes, sampling and evaluation with a report
    assert 0.0 <= results["train"]["generation"]["single_object_accuracy"] <= 1.0
    assert results["train"]["precision"] in ("fp32", "bf16")  # bf16 where this CPU runs it fast
    assert (tmp_path / "demo" / "train" / "report.md").is_file()
    # A second run reuses the tokenizer and finds every shard done.
    again = run_demo(tmp_path / "demo", samples=64, tokenizer_steps=10, train_steps=0, clips=32)
    assert again["tokenizer"]["fingerprint"] == results["tokenizer"]["fingerprint"]

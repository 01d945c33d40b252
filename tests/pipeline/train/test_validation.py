"""A held-out split from prep (`split.val_fraction`, by key hash) and validation losses during
training (`train.eval_every`): stable splits, readers that never mix them, version-1 shards
that still load, losses logged and plotted, training unchanged by it, resumes exact."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from support.train_helpers import cli_train, config, losses

from core.config import load_config
from core.errors import ConfigError, DataError
from data_prep import schema
from data_prep.config import PrepConfig
from data_prep.prep import run_prep
from data_prep.shards import verify_shards
from pipeline.data.reader import ShardReader
from pipeline.evaluate import write_report
from pipeline.train.loop import train


def prep(folder, tokenizer, *args):
    cfg = load_config(PrepConfig, None, [f"out_dir={folder}", f"tokenizer.path={tokenizer}", "source.limit=200",
                                         "shard_size=50", "use_ray=false", *args])
    return run_prep(cfg)


@pytest.fixture(scope="module")
def val_shards(tmp_path_factory, tiny_tokenizers):
    folder = tmp_path_factory.mktemp("val_shards")
    prep(folder, tiny_tokenizers["kl"], "split.val_fraction=0.2")
    return folder


def keys_of(reader: ShardReader, count: int) -> set[str]:
    return {reader.next()["key"] for _ in range(count)}


def test_split_is_stable_by_key_and_readers_never_mix_it(tmp_path, val_shards, tiny_tokenizers):
    manifest = schema.Manifest.read(val_shards)
    assert manifest.schema_version == 2 and sum(manifest.splits.values()) == 200
    assert 20 <= manifest.splits["val"] <= 60  # 20% of 200 keys, by hash
    assert verify_shards(val_shards) == []
    rows = list(schema.iter_rows(val_shards, columns=["key", "split"]))
    held_out = {r["key"] for r in rows if r["split"] == "val"}
    assert len(held_out) == manifest.splits["val"]
    assert held_out == {r["key"] for r in rows if schema.split_of(r["key"], 0.2) == "val"}
    # the same keys again with other shards: the split follows the key, not the shard
    other = tmp_path / "other"
    prep(other, tiny_tokenizers["kl"], "split.val_fraction=0.2", "shard_size=30")
    assert held_out == {r["key"] for r in schema.iter_rows(other, columns=["key", "split"]) if r["split"] == "val"}
    # train readers (any rank) never see a held-out key; the val reader sees only those
    for rank in (0, 1):
        assert not keys_of(ShardReader([str(val_shards)], rank, 2, shuffle_buffer=8), 300) & held_out
    assert keys_of(ShardReader([str(val_shards)], split="val"), 200) == held_out
    # a changed fraction is a changed data setting: refused in the same folder
    with pytest.raises(ConfigError, match="other settings"):
        prep(other, tiny_tokenizers["kl"], "split.val_fraction=0.1", "shard_size=30")


def downgrade_to_version_1(folder: Path) -> None:
    """Rewrite prep output as nodd wrote it before splits existed: no split column, version 1."""
    manifest = json.loads((folder / schema.MANIFEST).read_text())
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        meta = schema.read_shard_meta(path)
        meta.update(schema_version=1)
        meta.pop("splits")
        table = pq.read_table(path).drop_columns(["split"])
        pq.write_table(table.replace_schema_metadata({schema.METADATA_KEY: json.dumps(meta).encode()}), path)
        shard["sha256"] = schema.sha256_file(path)
        shard.pop("splits")
    manifest["schema_version"] = 1
    manifest.pop("splits")
    (folder / schema.MANIFEST).write_text(json.dumps(manifest))


def test_version_1_shards_still_train_and_say_how_to_get_a_split(tmp_path, tiny_tokenizers):
    old = tmp_path / "old"
    prep(old, tiny_tokenizers["kl"])
    downgrade_to_version_1(old)
    assert verify_shards(old) == []
    assert len(keys_of(ShardReader([str(old)]), 200)) == 200  # every row trains
    with pytest.raises(DataError, match="split.val_fraction"):
        ShardReader([str(old)], split="val")
    run = tmp_path / "run"
    with pytest.raises(DataError, match="no validation rows"):
        train(config(run, old, train__eval_every=2))
    assert not (run / "metrics.jsonl").exists()  # refused before the first step


def test_validation_is_logged_plotted_and_leaves_training_unchanged(tmp_path, val_shards):
    plain, validated = tmp_path / "plain", tmp_path / "validated"
    train(config(plain, val_shards))
    assert not (plain / "validation.jsonl").exists()
    train(config(validated, val_shards, train__eval_every=4, train__eval_batches=3))
    assert losses(validated) == losses(plain)  # forward only: weights, data and noise untouched
    records = [json.loads(line) for line in (validated / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 6]  # every 4 steps and at the last
    for r in records:
        assert all(r[k] > 0 for k in ("loss", "text", "understanding", "image")), r
    # stopped at step 3 (its last step: validated too) and resumed: the uninterrupted run's records
    part = tmp_path / "part"
    train(config(part, val_shards, train__steps=3, train__eval_every=4, train__eval_batches=3))
    train(config(part, val_shards, train__eval_every=4, train__eval_batches=3), resume=True)
    resumed = [json.loads(line) for line in (part / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [3, 4, 6]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed[1:]] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in records]
    report = write_report(validated, {"checkpoint": "x", "mode": "transfusion", "understanding": {"examples": []}})
    assert "Validation at step 6" in report.read_text() and (validated / "losses.png").stat().st_size > 0


@pytest.mark.slow
def test_validation_under_torchrun_on_two_fsdp_ranks(tmp_path, val_shards):
    run = tmp_path / "run"
    done = cli_train(run, val_shards, "train.steps=4", "train.eval_every=2", "train.eval_batches=2",
                     "parallel.dp_shard=2")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and all(r["loss"] > 0 for r in records)

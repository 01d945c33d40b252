"""The training loader: shards -> documents -> best-fit packed batches, resumable exactly."""

import pickle
import shutil
from collections import Counter

import numpy as np
import pytest
from support.loader_helpers import data_cfg, model_cfg, same

from core.errors import ConfigError, DataError
from model.config import ModelConfig
from pipeline.data.loader import PackedLoader
from pipeline.data.reader import ShardReader


def test_batches_are_packed_full_and_deterministic(shards):
    a = PackedLoader(data_cfg(shards["kl"]), model_cfg())
    b = PackedLoader(data_cfg(shards["kl"]), model_cfg())
    for _ in range(5):
        x, y = a.next_batch(), b.next_batch()
        assert x.tokens.shape == (2, 512) and same(x, y)
    assert a.efficiency >= 0.97, a.efficiency
    kinds = set(x.target_kind.unique().tolist())
    assert {1, 2} <= kinds  # text and understanding targets both present in a mixed batch


def test_resume_reproduces_the_next_batches_exactly(shards):
    cfg = data_cfg(shards["kl"])
    first = PackedLoader(cfg, model_cfg())
    for _ in range(3):
        first.next_batch()
    state = pickle.loads(pickle.dumps(first.state_dict()))  # what a checkpoint stores
    expected = [first.next_batch() for _ in range(4)]  # crosses shard boundaries and an epoch
    resumed = PackedLoader(cfg, model_cfg())
    resumed.load_state_dict(state)
    assert all(same(e, resumed.next_batch()) for e in expected)


def test_ranks_read_disjoint_rows_covering_the_epoch(shards):
    readers = [ShardReader([str(shards["kl"])], rank=r, world=2, seed=3) for r in range(2)]
    keys = [[reader.next()["key"] for _ in range(100)] for reader in readers]
    assert not set(keys[0]) & set(keys[1]) and len(set(keys[0]) | set(keys[1])) == 200
    # fewer shards than ranks: rows are striped instead, still disjoint
    many = [ShardReader([str(shards["kl"])], rank=r, world=8, seed=3) for r in range(8)]
    got = [reader.next()["key"] for reader in many for _ in range(25)]
    assert len(set(got)) == 200


def test_task_mix_dropout_and_latent_normalisation(shards):
    loader = PackedLoader(data_cfg(shards["kl"], text_to_image=1.0, image_to_text=0.0, text_only=0.0,
                                   caption_dropout=1.0, sample_latents="false"), model_cfg())
    docs = [loader._next_document() for _ in range(100)]
    assert all(d.task == "generate" and d.text_ids == [] for d in docs)
    latents = np.stack([d.latent for d in docs])
    assert abs(latents.mean()) < 0.2 and 0.7 < latents.std() < 1.3  # standardised per channel
    raw = loader.norm.denormalise(latents[0])
    assert np.allclose(loader.norm.normalise(raw), latents[0], atol=1e-5)


def test_caption_variants_draw_both_phrasings_of_a_relation(shards):
    """data.caption_variants="shapes": a relation caption is used as stored or named from the
    other object, re-tokenised with the run's tokenizer; other captions keep their stored ids."""
    from data_prep.builtin.shapes import paraphrases

    varied = PackedLoader(data_cfg(shards["kl"], caption_variants='"shapes"'), model_cfg())
    used = Counter()
    for _ in range(150):
        row = varied.reader.next()
        doc = varied.builder.build(row, varied.rng)
        assert list(row["text_ids"]) == list(row["caption"].encode())  # these shards are byte-level
        if not doc.text_ids:  # dropped for guidance
            continue
        forms = paraphrases(row["caption"])
        used[(len(forms), forms.index(bytes(doc.text_ids).decode()))] += 1
    assert used[(2, 0)] and used[(2, 1)] and used[(1, 0)] and set(used) == {(1, 0), (2, 0), (2, 1)}
    # the default keeps every stored caption (or drops it for guidance)
    plain = PackedLoader(data_cfg(shards["kl"]), model_cfg())
    for _ in range(50):
        row = plain.reader.next()
        assert plain.builder.build(row, plain.rng).text_ids in (list(row["text_ids"]), [])
    with pytest.raises(ConfigError, match="caption_variants"):
        data_cfg(shards["kl"], caption_variants='"coco"')


def test_discrete_mode_reads_codes(shards):
    loader = PackedLoader(data_cfg(shards["fsq"], tokenizer=""), model_cfg("discrete"))
    batch = loader.next_batch()
    assert batch.latents is None and (batch.target_kind == 3).any()


def test_discrete_next_scale_codes_come_from_the_tokenizer(shards, tiny_tokenizers):
    """The coarse scales' codes re-quantise the downsampled code vectors with the shards' own
    tokenizer; the finest scale is the stored code map."""
    import torch

    kind = "fsq"

    from model.scales import code_pyramid
    from model.tokenizers import load_image_tokenizer

    cfg = model_cfg("discrete")
    cfg.var_scales, cfg.codebook_size = [1, 2, 4, 8], load_image_tokenizer(tiny_tokenizers[kind]).vocab_size
    loader = PackedLoader(data_cfg(shards[kind], tokenizer=str(tiny_tokenizers[kind]), text_to_image=1.0,
                                   image_to_text=0.0, text_only=0.0), cfg)
    doc = loader._next_document()
    assert [c.shape for c in doc.scale_codes] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    assert (doc.scale_codes[-1] == doc.codes).all()
    tok = load_image_tokenizer(tiny_tokenizers[kind])
    with torch.no_grad():
        expected = code_pyramid(torch.as_tensor(doc.codes), [1, 2, 4, 8], tok.codes_to_latent, tok.latent_to_codes)
    assert all((a == b.numpy()).all() for a, b in zip(doc.scale_codes, expected))
    batch = loader.next_batch()
    assert (batch.span_grid[:, 1] == 1).any() and (batch.target_kind == 3).any()


def test_bad_inputs_fail_before_training(shards, tiny_tokenizers, tmp_path):
    with pytest.raises(DataError, match="another image tokenizer"):
        PackedLoader(data_cfg(shards["kl"], tokenizer=str(tiny_tokenizers["vq"])), model_cfg())
    with pytest.raises(DataError, match="needs vq/fsq codes"):
        PackedLoader(data_cfg(shards["kl"]), model_cfg("discrete"))
    with pytest.raises(DataError, match="latent channels"):
        PackedLoader(data_cfg(shards["kl"]), ModelConfig(width=32, depth=1, heads=4, latent_channels=8))
    with pytest.raises(DataError, match="not found"):
        PackedLoader(data_cfg(tmp_path / "nothing"), model_cfg())
    copy = tmp_path / "copy"
    shutil.copytree(shards["kl"], copy)
    (copy / "shard-000001.parquet").unlink()
    with pytest.raises(DataError, match="missing"):
        PackedLoader(data_cfg(copy), model_cfg())
    corrupt = tmp_path / "corrupt"
    shutil.copytree(shards["kl"], corrupt)
    for shard in corrupt.glob("shard-*.parquet"):
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256"):
        PackedLoader(data_cfg(corrupt), model_cfg()).next_batch()
    with pytest.raises(DataError, match="does not fit"):
        PackedLoader(data_cfg(shards["kl"], seq_len=32), model_cfg()).next_batch()
    with pytest.raises(ConfigError, match="caption_dropout"):
        data_cfg(shards["kl"], caption_dropout=2)


def test_resume_on_another_layout_starts_after_the_saved_epoch(shards):
    saved = ShardReader([str(shards["kl"])], rank=0, world=1, seed=3)
    for _ in range(120):  # 200 rows per epoch: still in epoch 0
        saved.next()
    other = ShardReader([str(shards["kl"])], rank=1, world=2, seed=3)
    other.load_state_dict(saved.state_dict())
    assert (other.epoch, other.cursor, other.row, other.buffer) == (1, 0, 0, [])
    fresh = ShardReader([str(shards["kl"])], rank=1, world=2, seed=3)
    fresh.start_at_epoch(1)
    assert [other.next()["key"] for _ in range(10)] == [fresh.next()["key"] for _ in range(10)]

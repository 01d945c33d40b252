"""`nodd prep` end to end with Ray: shards, manifest, resume, bad input, every output kind."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.config import load_config
from core.errors import ConfigError, DataError
from data_prep import schema
from data_prep.config import PrepConfig
from data_prep.prep import run_prep
from data_prep.shards import inspect_shards, verify_shards

pytestmark = pytest.mark.ray


def prep(tmp_path, tokenizer=None, name="out", **overrides):
    args = [f"out_dir={tmp_path / name}"] + ([f"tokenizer.path={tokenizer}"] if tokenizer else [])
    args += [f"{k.replace('__', '.')}={json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else v}"
             for k, v in overrides.items()]
    cfg = load_config(PrepConfig, None, args)
    return cfg, run_prep(cfg)


def npy(tmp_path, count):
    path = tmp_path / "images.npy"
    np.save(path, np.zeros((count, 32, 32, 3), dtype=np.uint8))
    return path


def all_rows(out_dir):
    return list(schema.iter_rows(out_dir))


def test_shapes_kl_end_to_end(tmp_path, tiny_tokenizers, local_ray):
    cfg, manifest = prep(tmp_path, tiny_tokenizers["kl"], source__kind="shapes", source__limit=50, shard_size=20)
    out = Path(cfg.out_dir)
    assert manifest["num_samples"] == 50 and [s["rows"] for s in manifest["shards"]] == [20, 20, 10]
    assert verify_shards(out, str(tiny_tokenizers["kl"])) == []
    rows = all_rows(out)
    assert sorted(r["key"] for r in rows) == [f"shapes-0-{i:07d}" for i in range(50)]
    mean, logvar = schema.decode_latent(rows[0])
    assert mean.shape == (4, 8, 8) and logvar.shape == (4, 8, 8) and mean.dtype == np.float32
    assert bytes(rows[0]["text_ids"]) == rows[0]["caption"].encode()  # byte tokenizer: ids are the bytes
    stats = manifest["latent_stats"]
    assert len(stats["mean"]) == 4 and stats["count"] == 50 * 64 and stats["scale"] > 0
    assert manifest["tokenizer"]["info_budget"]["values"] == 256
    # The same rows read with plain pyarrow: raw bytes + explicit shape and dtype.
    table = pq.read_table(out / "shard-000000.parquet")
    assert table.schema.field("latent_shape").type.value_type.bit_width == 32
    # Rerunning finds everything done and rewrites nothing.
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    _, again = prep(tmp_path, tiny_tokenizers["kl"], source__kind="shapes", source__limit=50, shard_size=20)
    assert again["shards"] == manifest["shards"]
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("shard-*.parquet")}
    assert (out / "prep_config.toml").is_file()
    written = inspect_shards(out, count=8)
    assert Path(written["png"]).stat().st_size > 0


def test_separate_stages_write_the_same_shards(tmp_path, tiny_tokenizers, local_ray):
    """The three-stage layout GPU clusters use (decode tasks -> encoder actors -> writer tasks),
    run on CPU, gives exactly the rows of the fused CPU stage."""
    common = dict(source__kind="shapes", source__limit=30, shard_size=10)
    fused, _ = prep(tmp_path, tiny_tokenizers["kl"], name="fused", **common)
    staged, manifest = prep(tmp_path, tiny_tokenizers["kl"], name="staged", ray__fuse_cpu_stages=False, **common)
    assert manifest["num_samples"] == 30
    key = lambda r: r["key"]  # noqa: E731
    for a, b in zip(sorted(all_rows(fused.out_dir), key=key), sorted(all_rows(staged.out_dir), key=key)):
        assert a["key"] == b["key"] and a["latent"] == b["latent"] and a["text_ids"] == b["text_ids"]


def test_changed_settings_are_refused(tmp_path, tiny_tokenizers, local_ray):
    prep(tmp_path, tiny_tokenizers["kl"], source__limit=10, shard_size=5, use_ray=False)
    with pytest.raises(ConfigError, match="changed: source"):
        prep(tmp_path, tiny_tokenizers["kl"], source__limit=10, source__seed=5, shard_size=5, use_ray=False)
    with pytest.raises(ConfigError, match="changed: num_units, shard_size"):
        prep(tmp_path, tiny_tokenizers["kl"], source__limit=10, shard_size=4, use_ray=False)
    prep(tmp_path, tiny_tokenizers["kl"], source__kind="npy", source__path=str(npy(tmp_path, 10)), shard_size=5,
         source__require_caption=False, use_ray=False, name="npy")
    # The user adds samples to the source, then reruns into the same out_dir.
    with pytest.raises(ConfigError, match="different number of samples"):
        prep(tmp_path, tiny_tokenizers["kl"], source__kind="npy", source__path=str(npy(tmp_path, 12)), shard_size=5,
             source__require_caption=False, use_ray=False, name="npy")
    with pytest.raises(ConfigError, match="trained on 32px images but image.size=64"):
        prep(tmp_path, tiny_tokenizers["kl"], source__limit=10, shard_size=5, image__size=64, use_ray=False)


@pytest.mark.parametrize("kind", ["fsq", "vq"])
def test_discrete_codes(tmp_path, tiny_tokenizers, kind, local_ray):
    cfg, manifest = prep(tmp_path, tiny_tokenizers[kind], source__limit=12, shard_size=12)
    row = all_rows(cfg.out_dir)[0]
    codes = schema.decode_codes(row)
    assert codes.shape == (8, 8) and codes.dtype == np.int16 and row["latent"] is None
    assert 0 <= codes.min() and codes.max() < manifest["tokenizer"]["vocab_size"]
    assert manifest["tokenizer"]["info_budget"]["bits_per_image"] > 0 and manifest["latent_stats"] == {}


def test_moving_shapes_video(tmp_path, tiny_tokenizers, local_ray):
    cfg, manifest = prep(tmp_path, tiny_tokenizers["kl"], source__kind="moving_shapes", source__limit=6, shard_size=4,
                         export_webdataset=True)
    rows = all_rows(cfg.out_dir)
    assert len(rows) == 6 and all(r["modality"] == "video" for r in rows)
    assert schema.decode_latent(rows[0])[0].shape == (8, 4, 8, 8)  # (T, C, h, w)
    written = inspect_shards(cfg.out_dir, count=4)
    assert written["mp4"].endswith(".mp4") and Path(written["mp4"]).stat().st_size > 0
    import webdataset as wds

    samples = list(wds.WebDataset(str(Path(cfg.out_dir) / "wds" / "shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 4 and np.load(__import__("io").BytesIO(samples[0]["latent.npy"])).shape == (8, 4, 8, 8)


def test_text_corpus_without_image_tokenizer(tmp_path, local_ray):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(30)))
    cfg, manifest = prep(tmp_path, source__kind="text", source__path=str(corpus), shard_size=8)
    rows = all_rows(cfg.out_dir)
    assert len(rows) == 30 and rows[0]["modality"] == "text" and rows[0]["latent"] is None
    assert bytes(rows[3]["text_ids"]).decode() == "document number 3"
    assert manifest["tokenizer"] == {} and verify_shards(cfg.out_dir) == []


def test_every_bad_input_is_recorded(tmp_path, tiny_tokenizers, bad_image_folder, local_ray):
    from support.media_files import BAD_IMAGES, ODD_IMAGES

    cfg, manifest = prep(tmp_path, tiny_tokenizers["kl"], source__kind="imagefolder", source__path=str(bad_image_folder),
                         image__max_pixels=4_000_000, max_error_rate=1.0, shard_size=4)
    errors = {e["key"]: e["reason"] for e in map(json.loads, (Path(cfg.out_dir) / "errors.jsonl").read_text().splitlines())}
    for key, (_, reason) in BAD_IMAGES.items():
        assert reason in errors.get(key, ""), (key, errors.get(key))
    keys = [r["key"] for r in all_rows(cfg.out_dir)]
    assert sorted(keys) == sorted([Path(n).stem for n in ODD_IMAGES] + ["dup"])  # the first "dup" is kept
    assert manifest["errors"]["count"] == len(BAD_IMAGES)


def test_error_rate_limit_fails_clearly(tmp_path, tiny_tokenizers, bad_image_folder, local_ray):
    with pytest.raises(DataError, match=r"failed.*over max_error_rate=0.1.*errors"):
        prep(tmp_path, tiny_tokenizers["kl"], source__kind="imagefolder", source__path=str(bad_image_folder),
             image__max_pixels=4_000_000, max_error_rate=0.1, shard_size=4)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("kind", ["parquet", "webdataset", "hf"])
def test_table_and_tar_sources_through_prep(tmp_path, tiny_tokenizers, kind, local_ray):
    from support.media_files import write_source

    path = write_source(kind, tmp_path / "src", count=9)
    cfg, manifest = prep(tmp_path, tiny_tokenizers["kl"], source__kind=kind, source__path=str(path), shard_size=4)
    assert manifest["num_samples"] == 9 and verify_shards(cfg.out_dir) == []

"""Every source kind lists deterministic items and loads them into decoded samples."""

import io
import json
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support.media_files import png_bytes, write_clip

from core.errors import ConfigError, DataError
from data_prep.config import ImageConfig, SourceConfig, VideoConfig
from data_prep.sources import Sample, SampleFailure, build_source


def load_all(kind, tmp_path, **source):
    src = build_source(SourceConfig(kind=kind, **source), ImageConfig(size=32), VideoConfig(fps=8, num_frames=8),
                       tmp_path / "cache")
    items = list(src.items())
    assert [i.key for i in items] == [i.key for i in src.items()], "listing must be deterministic"
    results = src.load_batch(items)
    return items, [r for r in results if isinstance(r, Sample)], [r for r in results if isinstance(r, SampleFailure)], src


def rand_png(seed):
    return png_bytes(Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)))


def test_imagefolder(image_folder, tmp_path):
    root, keys = image_folder
    items, ok, bad, _ = load_all("imagefolder", tmp_path, path=str(root))
    assert sorted(i.key for i in items) == sorted(keys) and not bad
    assert all(s.pixels.shape == (32, 32, 3) for s in ok)
    assert {s.caption for s in ok} == {f"picture {i}" for i in range(len(keys))}


def test_videofolder(tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for i, ext in enumerate(("mp4", "mkv", "webm")):
        write_clip(root / f"v{i}.{ext}", frames=8, fps=8) if ext == "mp4" else _write_other(root / f"v{i}.{ext}")
        (root / f"v{i}.txt").write_text(f"video {i}")
    items, ok, bad, _ = load_all("videofolder", tmp_path, path=str(root))
    assert not bad, bad
    assert [s.pixels.shape for s in ok] == [(8, 32, 32, 3)] * 3


def _write_other(path):
    import av

    codec = {".mkv": "ffv1", ".webm": "libvpx-vp9"}[path.suffix]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=8)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for t in range(8):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * t, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.mark.parametrize("hf_struct", [False, True])
def test_parquet(tmp_path, hf_struct):
    root = tmp_path / "pq"
    root.mkdir()
    images = [rand_png(i) for i in range(10)]
    cells = [{"bytes": b, "path": None} for b in images] if hf_struct else images
    cells[3] = {"bytes": b"junk", "path": None} if hf_struct else b"junk"
    table = pa.table({"image": cells, "caption": [f"c{i}" for i in range(10)], "id": [f"k{i}" for i in range(10)]})
    pq.write_table(table, root / "part-0.parquet", row_group_size=4)
    items, ok, bad, _ = load_all("parquet", tmp_path, path=str(root), key_column="id")
    assert [i.key for i in items] == [f"k{i}" for i in range(10)]
    assert len(ok) == 9 and [b.key for b in bad] == ["k3"] and "not an image" in bad[0].reason
    assert ok[4].caption == "c5"


def test_parquet_wrong_column_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"img": [b"x"], "caption": ["c"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="no column 'image'.*source.image_column"):
        load_all("parquet", tmp_path, path=str(tmp_path / "x.parquet"))


def test_hf_dataset_on_disk(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": rand_png(i), "path": None} for i in range(6)], "text": [f"t{i}" for i in range(6)]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))
    items, ok, bad, _ = load_all("hf", tmp_path, path=str(tmp_path / "hf"), caption_column="text")
    assert len(items) == 6 and not bad and ok[2].caption == "t2" and ok[2].pixels.shape == (32, 32, 3)


def test_webdataset(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    with tarfile.open(root / "shard-0.tar", "w") as tar:
        for i in range(5):
            for ext, data in (("jpg" if i % 2 else "png", rand_png(i)), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"sample{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (root / "shard-1.tar").write_bytes(b"this is not a tar")
    items, ok, bad, src = load_all("webdataset", tmp_path, path=str(root))
    assert [s.caption for s in ok] == [f"caption {i}" for i in range(5)]
    assert len(src.listing_errors) == 1 and "unreadable tar" in src.listing_errors[0].reason


def test_text_sources(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text("first line\n\nsecond line\n", encoding="utf-8")
    (root / "b.jsonl").write_text(json.dumps({"text": "json doc"}) + "\n{broken\n" + json.dumps({"x": 1}) + "\n")
    pq.write_table(pa.table({"text": ["parquet doc", None]}), root / "c.parquet")
    (root / "d.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    items, ok, bad, _ = load_all("text", tmp_path, path=str(root))
    assert [s.caption for s in ok] == ["first line", "second line", "json doc", "parquet doc"]
    assert all(s.modality == "text" for s in ok)
    reasons = sorted(b.reason.split(" ", 2)[-1][:20] for b in bad)
    assert len(bad) == 4, reasons  # broken json, missing field, null text, non-UTF-8 line


def test_builtin_shapes_and_moving_shapes(tmp_path):
    items, ok, bad, _ = load_all("shapes", tmp_path, limit=20, seed=3)
    assert len(ok) == 20 and not bad and ok[0].meta["objects"]
    again = load_all("shapes", tmp_path, limit=20, seed=3)[1]
    assert all((a.pixels == b.pixels).all() for a, b in zip(ok, again))
    relations = load_all("shapes", tmp_path, limit=20, seed=3, scene_weights=[0, 0, 1])[1]
    assert {s.meta["kind"] for s in relations} == {"relation"}
    for bad_weights in ([1, 2], [0, 0, 0], [1, -1, 1]):
        with pytest.raises(ConfigError, match="source.scene_weights: scene weights must be 3"):
            SourceConfig(kind="shapes", limit=4, scene_weights=bad_weights).validate()
    items, ok, bad, _ = load_all("moving_shapes", tmp_path, limit=6)
    assert len(ok) == 6 and not bad and ok[0].pixels.shape == (8, 32, 32, 3) and "moving" in ok[0].caption
    assert len(list((tmp_path / "cache").rglob("*.mp4"))) == 6  # real files, decoded like user videos


def test_digits_photos_npy(tmp_path):
    _, ok, bad, _ = load_all("digits", tmp_path, limit=30)
    assert len(ok) == 30 and ok[0].caption.startswith("the digit")
    _, ok, bad, _ = load_all("photos", tmp_path)
    assert len(ok) >= 5 and not bad
    array = np.random.default_rng(0).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", array)
    _, ok, bad, _ = load_all("npy", tmp_path, path=str(tmp_path / "imgs.npy"), require_caption=False)
    assert len(ok) == 7 and (ok[5].pixels == array[5]).all()


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_all("imagefolder", tmp_path, path=str(tmp_path / "nowhere"))


def test_limit_keeps_the_first_items_of_any_source(image_folder, tmp_path):
    root, keys = image_folder
    items, ok, bad, _ = load_all("imagefolder", tmp_path, path=str(root), limit=5)
    assert [i.key for i in items] == sorted(keys)[:5] and len(ok) == 5
    assert len(load_all("digits", tmp_path, limit=7)[0]) == 7

"""A trained run is usable: export, sample (from the run or its export: same pixels), caption."""

import numpy as np
from PIL import Image

from pipeline.cli import main
from pipeline.inference import load_run, sample_images
from pipeline.train.loop import train
from support.train_helpers import config


def test_export_sample_caption(tmp_path, shards, capsys):
    run = tmp_path / "run"
    train(config(run, shards["kl"], train__steps=3))
    assert main(["export", str(run)]) == 0
    from_run = sample_images(load_run(run), "a red circle", 2, steps=3, cfg_scale=2.0, seed=1)
    from_export = sample_images(load_run(run / "export"), "a red circle", 2, steps=3, cfg_scale=2.0, seed=1)
    assert from_run.shape == (2, 32, 32, 3) and from_run.dtype == np.uint8
    assert np.array_equal(from_run, from_export)
    assert main(["sample", "--run", str(run), "--prompt", "a red circle", "--n", "2", "--steps", "2"]) == 0
    assert list((run / "samples").glob("a-red-circle-seed0.png"))
    Image.fromarray(from_run[0]).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["caption", "--run", str(run), str(tmp_path / "x.png")]) == 0
    assert str(tmp_path / "x.png") in capsys.readouterr().out
    assert main(["caption", "--run", str(run), str(tmp_path / "missing.png")]) == 1
    assert main(["sample", "--run", str(tmp_path), "--prompt", "x"]) == 1  # not a run: clear error


def test_checkpoints_carry_an_engine_neutral_export_and_old_ones_still_load(tmp_path, shards):
    import json
    import shutil

    import pytest

    from core.errors import DataError

    run = tmp_path / "run"
    train(config(run, shards["kl"], train__steps=3))
    checkpoint = run / "checkpoints" / "step-000003"
    meta = json.loads((checkpoint / "meta.json").read_text())
    assert meta["engine"] == "native" and meta["format_version"] == 4
    assert (checkpoint / "export" / "model.safetensors").is_file()
    new = sample_images(load_run(run), "a blue square", 1, steps=2, cfg_scale=None, seed=3)
    exported = checkpoint / "export" / "model.json"
    good = exported.read_text()
    exported.write_text(json.dumps({**json.loads(good), "model": {**json.loads(good)["model"], "experts": 8}}))
    with pytest.raises(DataError, match="model.experts.*upgrade nodd"):  # not silently dropped
        load_run(run)
    exported.write_text(good)
    # a checkpoint of the first format: no export/, no engine in meta.json -> read from its DCP payload
    shutil.rmtree(checkpoint / "export")
    (checkpoint / "meta.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                      if k not in ("engine", "format_version")}))
    old = sample_images(load_run(run), "a blue square", 1, steps=2, cfg_scale=None, seed=3)
    assert np.array_equal(new, old)
    (checkpoint / "meta.json").write_text(json.dumps({**meta, "engine": "deepspeed"}))
    with pytest.raises(DataError, match="train.engine=deepspeed"):
        train(config(run, shards["kl"], train__steps=4), resume=True)
    (checkpoint / "meta.json").write_text(json.dumps({**meta, "format_version": 2}))  # before the SwiGLU split
    with pytest.raises(DataError, match="cannot be resumed"):
        train(config(run, shards["kl"], train__steps=4), resume=True)
    (checkpoint / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(DataError, match="upgrade nodd"):
        load_run(run)


def test_eval_writes_metrics_and_report(tmp_path, shards, capsys):
    import json

    run = tmp_path / "run"
    train(config(run, shards["kl"], train__steps=3))
    assert main(["eval", "--run", str(run), "--per-prompt", "1", "--extra-prompts", "2", "--images", "4",
                 "--steps", "2"]) == 0
    results = json.loads((run / "eval.json").read_text())
    gen = results["generation"]
    assert gen["prompts"] == 26 and gen["images"] == 26
    for value in (gen["single_object_accuracy"], gen["overall_accuracy"],
                  results["understanding"]["caption_accuracy"]):
        assert 0.0 <= value <= 1.0
    assert results["text"]["perplexity"] > 1.0
    und = results["understanding"]
    by_kind = {k for k in und if k.endswith("_accuracy") and k != "caption_accuracy"}
    assert und["images"] == 4 and by_kind and by_kind <= {"single_accuracy", "count_accuracy", "relation_accuracy"}
    report = (run / "report.md").read_text()
    assert "generation.single_object_accuracy" in report and (run / "losses.png").stat().st_size > 0
    assert (run / "eval_generations.png").is_file() and "report:" in capsys.readouterr().out


def test_prompt_grid_covers_every_single_object_and_parses():
    from data_prep.builtin.attributes import parse_caption
    from pipeline.evaluate import prompt_grid

    grid = prompt_grid(10)
    singles = [p for k, p in grid if k == "single"]
    assert len(singles) == 24 and len(set(singles)) == 24 and len(grid) == 34
    assert all(parse_caption(p) is not None for _, p in grid)
    assert {k for k, _ in grid} >= {"single", "count", "relation"}


def test_an_export_carries_its_tokenizers_and_works_moved_elsewhere(tmp_path, shards):
    import json
    import shutil

    from model.tokenizers.text import train_bpe
    from pipeline.export import bundle_tokenizers, bundled_paths

    run = tmp_path / "run"
    train(config(run, shards["kl"], train__steps=2))
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    moved = shutil.move(str(tmp_path / "out"), str(tmp_path / "elsewhere"))
    meta = json.loads((tmp_path / "elsewhere" / "model.json").read_text())
    assert meta["bundled"] and meta["image_tokenizer"] == "image_tokenizer" and meta["export_version"] == 3
    assert sorted(p.name for p in (tmp_path / "elsewhere" / "image_tokenizer").iterdir()) == [
        "fingerprint.txt", "tokenizer.safetensors", "tokenizer_config.json"]  # safetensors and JSON only
    loaded = load_run(moved)
    assert loaded.meta["image_tokenizer"] == str(tmp_path / "elsewhere" / "image_tokenizer")
    assert np.array_equal(sample_images(loaded, "a red circle", 1, steps=2, cfg_scale=None, seed=3),
                          sample_images(load_run(run), "a red circle", 1, steps=2, cfg_scale=None, seed=3))
    # a BPE text tokenizer is copied in too, and read back from the folder
    bpe = train_bpe(["a red circle", "two blue squares"] * 20, 280, tmp_path / "bpe" / "tokenizer.json")
    folder = tmp_path / "bundle"
    folder.mkdir()
    text_meta = bundle_tokenizers({"text_tokenizer": str(tmp_path / "bpe" / "tokenizer.json")}, folder)
    assert text_meta["text_tokenizer"] == "text_tokenizer.json"
    from model.tokenizers import load_text_tokenizer

    again = load_text_tokenizer(bundled_paths(text_meta, folder)["text_tokenizer"])
    assert again.fingerprint == bpe.fingerprint


def test_the_python_api_generates_captions_and_round_trips_the_tokenizer(tmp_path, shards):
    import pytest

    from core.errors import DataError
    from pipeline.api import load

    run = tmp_path / "run"
    train(config(run, shards["kl"], train__steps=2))
    assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    model = load(tmp_path / "export")
    images = model.generate("a red circle", n=2, steps=2, seed=0)
    assert images.shape == (2, 32, 32, 3) and np.array_equal(images, model.generate("a red circle", n=2, steps=2, seed=0))
    assert np.array_equal(images, sample_images(load_run(run), "a red circle", 2, steps=2, cfg_scale=3.0, seed=0))
    assert len(model.caption(images, max_tokens=3)) == 2
    latents = model.encode(images)
    assert latents.shape == (2, 4, 8, 8) and model.decode(latents).shape == images.shape
    assert model.text.decode(model.text.encode("a red circle")) == "a red circle"
    with pytest.raises(DataError, match="uint8"):
        model.caption(images.astype(np.float32))

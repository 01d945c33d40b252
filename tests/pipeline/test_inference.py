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

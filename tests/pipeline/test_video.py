"""Video end to end: train text-to-video and video captioning on moving-shapes clips, sample a
clip as an mp4, score clips by reading them back (the generator knows the truth)."""

import av
import numpy as np
import pytest

from core.config import load_config
from core.errors import DataError
from data_prep.builtin.moving_shapes import moving_clip, score_clip
from pipeline.cli import main
from pipeline.evaluate import evaluate
from pipeline.inference import load_run, sample_videos
from pipeline.train.config import TrainConfig
from pipeline.train.loop import train
from support.train_helpers import losses


@pytest.fixture(scope="module")
def clips(tmp_path_factory, tiny_tokenizers):
    """24 moving-shapes clips of 8 frames through the real video path (mp4 files, decode, encode)."""
    from data_prep.config import PrepConfig
    from data_prep.prep import run_prep

    folder = tmp_path_factory.mktemp("clips")
    run_prep(load_config(PrepConfig, "configs/prep/moving_shapes.toml", [
        f"out_dir={folder / 'shards'}", f"tokenizer.path={tiny_tokenizers['kl']}", "source.limit=24",
        "shard_size=12", "use_ray=false"]))
    return folder / "shards"


def test_the_reader_scores_true_clips_right_and_wrong_captions_wrong():
    for i in range(8):
        frames, caption, meta = moving_clip(7, i)
        assert score_clip(frames, caption)["overall"]
        opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[meta["direction"]]
        assert not score_clip(frames, caption.replace(meta["direction"], opposite))["direction"]
        assert not score_clip(frames[::-1], caption)["direction"]  # played backwards
    with pytest.raises(DataError, match="not a moving-shapes caption"):
        score_clip(frames, "a red circle")


def test_train_on_clips_then_sample_an_mp4_and_score_clips(tmp_path, clips):
    run = tmp_path / "run"
    cfg = load_config(TrainConfig, "configs/train/moving_shapes.toml", [
        f"run_dir={run}", f"data.shards={clips}", "model.width=32", "model.depth=2", "data.seq_len=320",
        "data.batch_rows=2", "train.steps=6", "train.log_every=1", "train.checkpoint_every=6", "optim.warmup_steps=2"])
    train(cfg)
    curve = losses(run)
    assert curve[6] < curve[1], curve
    clip = sample_videos(load_run(run), "a red circle moving right", 1, 8, steps=2, cfg_scale=None, seed=0)
    assert clip.shape == (1, 8, 32, 32, 3) and clip.dtype == np.uint8
    assert main(["sample", "--run", str(run), "--prompt", "a red circle moving right", "--video", "--n", "1",
                 "--steps", "2"]) == 0
    mp4 = run / "samples" / "a-red-circle-moving-right-seed0-0.mp4"
    with av.open(str(mp4)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (32, 32, 3)
    results = evaluate(run, per_prompt=1, extra=0, images=2, steps=2, videos=3)
    video = results["video"]
    assert video["clips"] == 3 and 0 <= video["overall_accuracy"] <= 1
    assert (run / "eval_videos.png").is_file() and "video.direction_accuracy" in (run / "report.md").read_text()
    assert 0 <= video["caption_accuracy"] <= 1 and len(video["caption_examples"]) == 3
    assert "video.caption_direction_accuracy" in (run / "report.md").read_text()


def test_video_captions_are_scored_against_the_clips_truth(tmp_path, clips, monkeypatch):
    """The captioning half of the video score: right exactly when colour, shape and direction are."""
    import pipeline.evaluate as evaluate_module
    import pipeline.inference as inference

    def truths(count):
        return [moving_clip(evaluate_module.HELD_OUT_SEED + 4, n)[1] for n in range(count)]

    run = tmp_path / "run"
    train(load_config(TrainConfig, "configs/train/moving_shapes.toml", [
        f"run_dir={run}", f"data.shards={clips}", "model.width=32", "model.depth=2", "data.seq_len=320",
        "data.batch_rows=2", "train.steps=1", "train.checkpoint_every=1"]))
    loaded = load_run(run)
    monkeypatch.setattr(inference, "caption_videos", lambda _run, clips: truths(len(clips)))
    exact = evaluate_module.evaluate_video(loaded, 4, 8, 1, None, run)
    assert exact["caption_accuracy"] == 1.0 and exact["caption_direction_accuracy"] == 1.0
    flipped = {"left": "right", "right": "left", "up": "down", "down": "up"}
    monkeypatch.setattr(inference, "caption_videos", lambda _run, clips: [
        " ".join(t.split()[:-1] + [flipped[t.split()[-1]]]) for t in truths(len(clips))])
    wrong_way = evaluate_module.evaluate_video(loaded, 4, 8, 1, None, run)
    assert wrong_way["caption_accuracy"] == 0.0 and wrong_way["caption_direction_accuracy"] == 0.0
    assert wrong_way["caption_color_accuracy"] == wrong_way["caption_shape_accuracy"] == 1.0

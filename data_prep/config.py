"""The `nodd prep` config tree (sections: source, image, video, tokenizer, ray).

Read with `core.config.load_config(PrepConfig, path, overrides)`; see configs/prep/*.toml.
`SourceConfig`, `ImageConfig` and `VideoConfig` are shared with `nodd tokenizer train`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from core.errors import ConfigError, DataError

SourceKind = Literal[
    "shapes", "moving_shapes", "digits", "photos",
    "imagefolder", "videofolder", "parquet", "hf", "webdataset", "text", "npy",
]
GENERATED_SOURCES = ("shapes", "moving_shapes")
PATH_SOURCES = ("imagefolder", "videofolder", "parquet", "hf", "webdataset", "text", "npy")


@dataclass
class SourceConfig:
    """Where samples come from. Built-in kinds need no path; the others read `path`."""

    kind: SourceKind = "shapes"
    # Folder, file or glob (imagefolder, videofolder, parquet, hf, webdataset, text, npy).
    path: str = ""
    # Generated sources: how many samples. Other sources: keep only the first N (0 = all).
    limit: int = 0
    # Seed of the built-in generators (shapes, moving_shapes).
    seed: int = 0
    # shapes: weights of single / count / relation scenes ([] = 0.4, 0.3, 0.3). Skewing training
    # data towards relations teaches them faster; evaluation always uses the default mix.
    scene_weights: list[float] = field(default_factory=list)
    # Table sources (parquet, hf): column names. For `text` sources `text_column` is the jsonl
    # key or Parquet column that holds the document.
    image_column: str = "image"
    caption_column: str = "caption"
    text_column: str = "text"
    # Column holding a stable key; empty means "<file>:<row>".
    key_column: str = ""
    # Plain .txt corpora: one document per line, or one per file.
    text_unit: Literal["line", "file"] = "line"
    # An image or video without a caption is an error record (true) or kept with an empty caption.
    require_caption: bool = True

    def validate(self) -> None:
        if self.kind in PATH_SOURCES and not self.path:
            raise ConfigError(f"source.path is required for source.kind={self.kind!r}; point it at your data")
        if self.kind in GENERATED_SOURCES and self.limit <= 0:
            raise ConfigError(f"source.limit must be > 0 for the generated source {self.kind!r} (how many samples)")
        if self.limit < 0:
            raise ConfigError("source.limit must be >= 0 (0 means all samples)")
        if self.scene_weights:
            from data_prep.builtin.shapes import scene_probabilities  # the one check of these weights

            try:
                scene_probabilities(self.scene_weights)
            except DataError as exc:
                raise ConfigError(f"source.scene_weights: {exc} ([] = the default 0.4, 0.3, 0.3)") from exc


@dataclass
class ImageConfig:
    """How images are decoded: center-cropped to a square and resized to `size`."""

    size: int = 32
    # Images smaller than this (either side) are rejected as too small to be useful.
    min_size: int = 8
    # Decompression-bomb guard: images with more pixels are rejected before decoding.
    max_pixels: int = 64_000_000

    def validate(self) -> None:
        if self.size < 8 or self.size % 8:
            raise ConfigError(f"image.size={self.size} must be a multiple of 8 and >= 8")
        if self.min_size < 1:
            raise ConfigError("image.min_size must be >= 1")


@dataclass
class VideoConfig:
    """How clips are cut from videos: `num_frames` frames sampled at `fps` from `start_seconds`."""

    fps: float = 8.0
    num_frames: int = 8
    start_seconds: float = 0.0
    # Longest video accepted, so a 3-hour file does not stall a worker (0 = no limit).
    max_seconds: float = 3600.0

    def validate(self) -> None:
        if self.fps <= 0:
            raise ConfigError(f"video.fps={self.fps} must be > 0")
        if self.num_frames < 1:
            raise ConfigError(f"video.num_frames={self.num_frames} must be >= 1")


@dataclass
class TokenizerRef:
    """Which tokenizers encode the data."""

    # Directory written by `nodd tokenizer train` (tokenizer.safetensors + config + fingerprint).
    # Empty is allowed only for text-only sources.
    path: str = ""
    # Text tokenizer: "byte" or a path to a tokenizer.json (e.g. a BPE from `nodd tokenizer train kind=bpe`).
    text: str = "byte"


@dataclass
class RayConfig:
    """Where Ray runs. Empty address starts a private local Ray; `auto` or `ray://host:port`
    joins an existing cluster."""

    address: str = ""
    # Logical CPUs of a local Ray (0 = 2 x the cores, so decode tasks and encoder actors overlap
    # instead of hanging on a 2-core machine: ray issue 44687; data_prep/ray_runtime.py).
    num_cpus: int = 0
    # Encoder actors (0 = one per core locally, one per GPU when GPUs exist).
    encoders: int = 0
    # GPUs per encoder actor on a cluster with GPUs (ignored without GPUs).
    gpus_per_encoder: float = 1.0
    # Without GPUs, run decode+encode+write as one actor stage (faster on CPUs: the stages would
    # only compete for the same cores; bench/README.md). false keeps the three stages that GPU
    # clusters use (CPU decode tasks -> GPU encoder actors -> writer tasks).
    fuse_cpu_stages: bool = True


@dataclass
class SplitConfig:
    """A held-out validation split, chosen per sample by a hash of its key: the same samples are
    held out in every rerun and resume, whatever the shard size or worker count."""

    # Fraction of samples marked `split = "val"` in the shards (0 = every sample trains). The
    # trainer reads only "train" rows; `train.eval_every` computes validation losses on "val" rows.
    val_fraction: float = 0.0

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"split.val_fraction={self.val_fraction} must be >= 0 and < 1 (e.g. 0.02)")


@dataclass
class PrepConfig:
    """`nodd prep`: read a source, decode, encode with a tokenizer, write verified shards."""

    source: SourceConfig = field(default_factory=lambda: SourceConfig(kind="shapes", limit=1000))
    image: ImageConfig = field(default_factory=ImageConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    tokenizer: TokenizerRef = field(default_factory=TokenizerRef)
    ray: RayConfig = field(default_factory=RayConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    out_dir: str = "runs/prep/shapes"
    # Samples per shard: also the unit of work and of resume.
    shard_size: int = 1000
    # Images per encoder forward pass.
    encode_batch_size: int = 256
    # Fail (non-zero exit, no manifest) when more than this fraction of samples are bad.
    max_error_rate: float = 0.05
    # Storage dtype of continuous latents.
    latent_dtype: Literal["float32", "float16"] = "float32"
    # Also write the samples as webdataset tars under <out_dir>/wds.
    export_webdataset: bool = False
    # Run without Ray (one process): for debugging and the benchmark's baseline.
    use_ray: bool = True

    def validate(self) -> None:
        if not self.out_dir:
            raise ConfigError("out_dir must name the folder for shards, e.g. out_dir=runs/prep/mydata")
        if self.shard_size < 1:
            raise ConfigError(f"shard_size={self.shard_size} must be >= 1")
        if self.encode_batch_size < 1:
            raise ConfigError(f"encode_batch_size={self.encode_batch_size} must be >= 1")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"max_error_rate={self.max_error_rate} must be between 0 and 1")
        if not self.tokenizer.path and self.source.kind != "text":
            raise ConfigError(
                f"tokenizer.path is required for source.kind={self.source.kind!r}: train one with "
                "`nodd tokenizer train --config configs/tokenizer/shapes_kl.toml` and pass tokenizer.path=<its out_dir>"
            )

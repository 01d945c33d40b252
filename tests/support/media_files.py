"""Test data for data_prep tests: folders of good and deliberately bad media."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def colored(size=(40, 30), color=(200, 30, 30), mode="RGB") -> Image.Image:
    return Image.new(mode, size, color)


def write_image_folder(root: Path, count: int = 12) -> list[str]:
    """`count` good images with .txt or .json captions; returns their keys."""
    rng = np.random.default_rng(0)
    keys = []
    for i in range(count):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 255, (24 + i, 30, 3), dtype=np.uint8)
        path = sub / f"img{i:02d}.{'png' if i % 3 else 'jpg'}"
        Image.fromarray(array).save(path)
        if i % 4 == 0:
            path.with_suffix(".json").write_text(json.dumps({"caption": f"picture {i}", "source": "test"}))
        else:
            path.with_suffix(".txt").write_text(f"picture {i}\n", encoding="utf-8")
        keys.append(f"{sub.name}/{path.stem}")
    return keys


# Every bad-input kind the issue names, with the reason fragment prep must record.
BAD_IMAGES = {
    "truncated": ("truncated.jpg", "corrupt or truncated image"),
    "garbage": ("garbage.png", "not an image"),
    "empty": ("empty.jpg", "empty file"),
    "text_as_image": ("text_as_image.png", "not an image"),
    "tiny": ("tiny.png", "smaller than image.min_size"),
    "bomb": ("bomb.png", "decompression-bomb guard"),
    "no_caption": ("no_caption.png", "missing caption"),
    "latin1_caption": ("latin1_caption.png", "not UTF-8"),
    "empty_caption": ("empty_caption.png", "missing caption"),
    "dup": ("dup.png", "duplicate key"),  # dup.jpg sorts first and is kept
}
# Odd but valid images that must be converted, not rejected.
ODD_IMAGES = ("cmyk.jpg", "gray.png", "rgba.png", "palette.gif", "sixteen.png", "la.png")


def write_bad_image_folder(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    good = png_bytes(colored())
    jpeg = png_bytes(colored((64, 64)), "JPEG")

    def put(name: str, data: bytes, caption: bytes | None = b"a caption") -> None:
        (root / name).write_bytes(data)
        if caption is not None:
            (root / name).with_suffix(".txt").write_bytes(caption)

    put("truncated.jpg", jpeg[: len(jpeg) // 2])
    put("garbage.png", np.random.default_rng(1).bytes(500))
    put("empty.jpg", b"")
    put("text_as_image.png", b"hello, I am not an image\n")
    put("tiny.png", png_bytes(colored((4, 4))))
    put("bomb.png", png_bytes(Image.new("1", (3000, 3000))))  # 9 Mpx; tests set max_pixels=4M
    put("no_caption.png", good, caption=None)
    put("latin1_caption.png", good, caption="café crème".encode("latin-1"))
    put("empty_caption.png", good, caption=b"   \n")
    put("dup.png", good)
    put("dup.jpg", jpeg, caption=None)  # same key "dup"; its caption file is dup.txt
    put("cmyk.jpg", png_bytes(colored((40, 40), (10, 200, 30, 0), "CMYK"), "JPEG"))
    put("gray.png", png_bytes(colored((40, 40), 128, "L")))
    put("rgba.png", png_bytes(colored((40, 40), (255, 0, 0, 0), "RGBA")))  # fully transparent -> white
    put("palette.gif", png_bytes(colored((40, 40), (0, 0, 255)).convert("P"), "GIF"))
    put("sixteen.png", png_bytes(Image.fromarray(np.full((40, 40), 65535, dtype=np.uint16))))
    put("la.png", png_bytes(colored((40, 40), (90, 255), "LA")))


def write_clip(path: Path, frames: int = 8, fps: int = 8, size: int = 32, color=(220, 30, 30), step: int = 2) -> None:
    """A bar moving right by `step` pixels per frame."""
    from data_prep.builtin.moving_shapes import write_mp4

    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        video[t, 8:16, 2 + step * t:10 + step * t] = color
    write_mp4(video, path, fps=fps)


def write_source(kind: str, root: Path, count: int) -> Path:
    """A small Parquet / webdataset / HF-on-disk dataset of random images with captions."""
    import tarfile

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = [png_bytes(Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8))) for _ in range(count)]
    captions = [f"random picture {i}" for i in range(count)]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"image": images, "caption": captions}), root / "data.parquet", row_group_size=4)
    elif kind == "webdataset":
        with tarfile.open(root / "shard-000.tar", "w") as tar:
            for i, (image, caption) in enumerate(zip(images, captions)):
                for ext, data in (("png", image), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    elif kind == "hf":
        import datasets

        features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
        datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images], "caption": captions},
                                   features=features).save_to_disk(str(root / "hf"))
        return root / "hf"
    return root

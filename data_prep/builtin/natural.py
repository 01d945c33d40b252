"""Offline natural images: scikit-learn's handwritten digits and scikit-image's bundled photos.

Both ship inside the installed wheels, so they work on machines without network. Every sample
is a tuple (key, image uint8 (H, W, 3), caption, meta), the same form as other sources.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from core.errors import DataError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# skimage.data loader -> (file bundled in the wheel, what the photo shows). Only files present
# in the package are loaded: a missing one would make skimage try a download through pooch.
PHOTOS: dict[str, tuple[str, str]] = {
    "astronaut": ("astronaut.png", "an astronaut"),
    "coffee": ("coffee.png", "a cup of coffee"),
    "chelsea": ("chelsea.png", "a cat"),
    "rocket": ("rocket.jpg", "a rocket on a launch pad"),
    "camera": ("camera.png", "a man with a camera"),
    "coins": ("coins.png", "old coins"),
    "hubble_deep_field": ("hubble_deep_field.jpg", "galaxies in deep space"),
    "immunohistochemistry": ("ihc.png", "stained tissue under a microscope"),
    "horse": ("horse.png", "a horse silhouette"),
    "moon": ("moon.png", "the surface of the moon"),
    "page": ("page.png", "a page of printed text"),
    "text": ("text.png", "text on a sign"),
    "brick": ("brick.png", "a brick wall"),
    "grass": ("grass.png", "grass"),
    "gravel": ("gravel.png", "gravel"),
    "retina": ("retina.jpg", "a human retina"),
    "microaneurysms": ("microaneurysms.png", "blood vessels of a retina"),
    "clock": ("clock_motion.png", "a clock"),
    "logo": ("logo.png", "the scikit-image logo"),
    "cell": ("cell.png", "a cell under a microscope"),
    "colorwheel": ("color.png", "a color wheel"),
}

Sample = tuple[str, np.ndarray, str, dict]


def _check_size(image_size: int) -> None:
    if int(image_size) != image_size or image_size < 8:
        raise DataError(f"image_size must be an integer >= 8, got {image_size}; use e.g. 32 or 64")


def digits_samples(image_size: int = 32) -> list[Sample]:
    """The 1797 sklearn digits (8x8, values 0-16) as white-on-black RGB, bilinearly upscaled."""
    _check_size(image_size)
    from sklearn.datasets import load_digits  # sklearn is slow to import; only load it here

    digits = load_digits()
    samples: list[Sample] = []
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        small = Image.fromarray((pixels * (255.0 / 16.0)).astype(np.float32), mode="F")
        big = np.asarray(small.resize((image_size, image_size), Image.Resampling.BILINEAR))
        gray = np.clip(np.rint(big), 0, 255).astype(np.uint8)
        samples.append((f"digits-{i:05d}", np.repeat(gray[..., None], 3, axis=2),
                        f"the digit {DIGIT_WORDS[int(label)]}", {"label": int(label)}))
    return samples


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Grayscale, boolean, float or RGBA skimage arrays as RGB uint8 (RGBA over white)."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255 if image.max() <= 1.0 else image), 0, 255)
        image = image.astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:].astype(np.float64) / 255.0
        blended = image[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return image[..., :3]


def _square_resize(image: np.ndarray, image_size: int) -> np.ndarray:
    """Center-crop to a square, then resize (Lanczos for downscaling, bilinear otherwise)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(image[top:top + side, left:left + side])
    resample = Image.Resampling.LANCZOS if side > image_size else Image.Resampling.BILINEAR
    return np.asarray(crop.resize((image_size, image_size), resample), dtype=np.uint8)


def photo_samples(image_size: int = 64) -> list[Sample]:
    """The skimage.data photos that ship with the wheel, square RGB uint8, "a photo of a cat"."""
    _check_size(image_size)
    import skimage.data  # heavy import, only needed here

    data_dir = os.path.dirname(skimage.data.__file__)
    samples: list[Sample] = []
    for name, (filename, subject) in PHOTOS.items():
        loader = getattr(skimage.data, name, None)
        if loader is None or not os.path.exists(os.path.join(data_dir, filename)):
            continue  # not bundled in this skimage version; loading it would need the network
        try:
            image = loader()
        except Exception:  # noqa: BLE001 - a broken or changed loader just drops that photo
            continue
        rgb = _square_resize(_to_rgb_uint8(image), image_size)
        samples.append((f"photo-{name}", rgb, f"a photo of {subject}",
                        {"name": name, "subject": subject}))
    if not samples:
        raise DataError("no scikit-image sample photo could be loaded; reinstall scikit-image "
                        "(pip install --force-reinstall scikit-image) to restore its bundled data")
    return samples

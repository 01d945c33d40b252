"""Tests for the offline natural images: sklearn digits and the photos bundled with skimage."""

import numpy as np
import pytest

from core.errors import DataError
from data_prep.builtin.natural import DIGIT_WORDS, digits_samples, photo_samples


@pytest.fixture(scope="module")
def digits():
    return digits_samples(32)


def test_digits_form_and_captions(digits):
    assert len(digits) == 1797
    keys = [key for key, *_ in digits]
    assert keys[0] == "digits-00000" and keys[-1] == "digits-01796" and len(set(keys)) == 1797
    for key, image, caption, meta in digits[:50]:
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        assert caption == f"the digit {DIGIT_WORDS[meta['label']]}"
        assert isinstance(meta["label"], int) and 0 <= meta["label"] <= 9
        assert image.max() > 200 and image.mean() < 128  # white digit on black
    assert {meta["label"] for *_, meta in digits} == set(range(10))
    assert "the digit seven" in {caption for _, _, caption, _ in digits}


def test_digits_other_size():
    key, image, caption, meta = digits_samples(48)[0]
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8 and meta == {"label": 0}


@pytest.mark.parametrize("image_size", (64, 32))
def test_photos_load_offline(image_size):
    photos = photo_samples(image_size)
    assert len(photos) >= 5
    keys = [key for key, *_ in photos]
    assert len(set(keys)) == len(keys) and all(k.startswith("photo-") for k in keys)
    for key, image, caption, meta in photos:
        assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
        assert caption.startswith("a photo of ") and key == f"photo-{meta['name']}"
        assert image.std() > 5  # a real picture, not a blank
    by_key = {key: caption for key, _, caption, _ in photos}
    assert by_key.get("photo-chelsea") == "a photo of a cat"


def test_bad_size_is_a_data_error():
    with pytest.raises(DataError, match="image_size"):
        photo_samples(4)
    with pytest.raises(DataError, match="image_size"):
        digits_samples(0)

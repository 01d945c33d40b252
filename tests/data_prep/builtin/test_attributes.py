"""Tests for the attribute reader: accuracy on renders, blur robustness, captions and scoring."""

import numpy as np
import pytest
from scipy import ndimage

from core.errors import DataError
from data_prep.builtin.attributes import CaptionSpec, DetectedObject, describe, parse_caption, read_objects, score_image
from data_prep.builtin.shapes import ShapeObject, render_objects, shapes_sample


def _degrade(image: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """3x3 box blur plus Gaussian pixel noise: a stand-in for a blurry generated image."""
    blurred = ndimage.uniform_filter(image.astype(np.float64), size=(3, 3, 1), mode="constant")
    noisy = blurred + rng.normal(0.0, noise, blurred.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("image_size", (32, 64))
def test_reader_accuracy_on_clean_renders(image_size, capsys):
    n = 2000
    failures = []
    for index in range(n):
        image, caption, _ = shapes_sample(0, index, image_size)
        if not score_image(image, caption)["overall"]:
            failures.append(caption)
    accuracy = 1 - len(failures) / n
    with capsys.disabled():
        print(f"\n[reader] clean renders at {image_size} px: overall accuracy {accuracy:.4f} "
              f"({n - len(failures)}/{n})")
    assert accuracy >= 0.99, failures[:10]


@pytest.mark.parametrize("image_size", (32, 64))
def test_reader_is_robust_to_blur_and_noise(image_size, capsys):
    rng = np.random.default_rng(0)
    n = 400
    ok = sum(score_image(_degrade(image, rng, noise=8.0), caption)["overall"]
             for image, caption, _ in (shapes_sample(1, i, image_size) for i in range(n)))
    with capsys.disabled():
        print(f"\n[reader] 3x3 box blur + noise sd 8 at {image_size} px: overall accuracy "
              f"{ok / n:.4f} ({ok}/{n})")
    assert ok / n >= 0.9


def test_read_objects_finds_geometry():
    objects = [ShapeObject("triangle", "red", 10.0, 10.0, 12.0),
               ShapeObject("diamond", "cyan", 40.0, 12.0, 12.0),
               ShapeObject("square", "yellow", 12.0, 44.0, 10.0),
               ShapeObject("circle", "purple", 44.0, 44.0, 14.0)]
    found = read_objects(render_objects(objects, 64))
    assert sorted((o.shape, o.color) for o in found) == sorted(
        (o.shape, o.color) for o in objects)
    by_color = {o.color: o for o in found}
    assert abs(by_color["yellow"].cx - 12.0) < 0.01 and abs(by_color["yellow"].cy - 44.0) < 0.01
    assert by_color["yellow"].area == 100
    assert by_color["red"].cy > 10.0  # a triangle's centroid is below its box center


def test_read_objects_ignores_gray_and_specks():
    image = np.full((32, 32, 3), 90, dtype=np.uint8)  # gray background, not a palette color
    image[5, 5] = (230, 30, 30)  # a one-pixel red speck is noise
    assert read_objects(image) == []
    with pytest.raises(DataError, match="uint8"):
        read_objects(image.astype(np.float32))
    with pytest.raises(DataError, match="RGB"):
        read_objects(image[..., 0])


def test_parse_caption_grammar_and_tolerance():
    assert parse_caption("a red circle") == CaptionSpec("single", [(1, "red", "circle")], None)
    assert parse_caption("  Two GREEN  triangles. ") == CaptionSpec(
        "count", [(2, "green", "triangle")], None)
    assert parse_caption("3 blue squares") == CaptionSpec("count", [(3, "blue", "square")], None)
    assert parse_caption("two red circle").objects == [(2, "red", "circle")]
    spec = parse_caption("A red circle to the left of a blue square.")
    assert spec == CaptionSpec("relation", [(1, "red", "circle"), (1, "blue", "square")],
                               "left of")
    assert parse_caption("a cyan diamond below a cyan circle").relation == "below"
    for bad in ("", "a circle", "a red hexagon", "four red circles", "a red circle next to a "
                "blue square", "two red circles left of a blue square", "hello", None):
        assert parse_caption(bad) is None, bad


def test_score_image_checks_each_attribute():
    image = render_objects([ShapeObject("circle", "red", 10.0, 16.0, 10.0),
                            ShapeObject("square", "blue", 24.0, 16.0, 8.0)], 32)
    good = score_image(image, "a red circle left of a blue square")
    assert good == {"object": True, "color": True, "count": True, "position": True,
                    "overall": True}
    swapped = score_image(image, "a red circle right of a blue square")
    assert swapped["position"] is False and swapped["overall"] is False
    assert swapped["object"] and swapped["color"] and swapped["count"]
    wrong_color = score_image(image, "a green circle above a blue square")
    assert wrong_color["object"] and not wrong_color["color"] and not wrong_color["position"]
    single = score_image(image, "a red circle")
    assert single["position"] is None and single["color"] and single["count"] is False
    assert score_image(image, "two red circles")["count"] is False
    assert score_image(image, "a red triangle")["object"] is False
    with pytest.raises(DataError, match="grammar"):
        score_image(image, "a nice picture")


def test_describe_round_trips_through_the_reader():
    for index in range(300):
        image, caption, meta = shapes_sample(4, index, 32)
        text = describe(read_objects(image))
        assert text is not None and parse_caption(text) is not None
        if meta["kind"] != "relation":
            assert text == caption
        assert score_image(image, text)["overall"], (caption, text)
    assert describe([]) is None
    mixed = [DetectedObject("circle", "red", 5, 5, 20), DetectedObject("square", "red", 20, 5, 20),
             DetectedObject("circle", "blue", 5, 20, 20)]
    assert describe(mixed) is None
    pair = [DetectedObject("square", "blue", 25, 10, 30),
            DetectedObject("circle", "red", 5, 12, 30)]
    assert describe(pair) == "a red circle left of a blue square"

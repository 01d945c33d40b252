"""Tests for the procedural shapes set: determinism, layout rules, captions and meta."""

import json
from collections import Counter

import numpy as np
import pytest

from core.errors import DataError
from data_prep.builtin.attributes import parse_caption, score_image
from data_prep.builtin.shapes import (
    COLORS,
    SHAPES,
    Scene,
    ShapeObject,
    number_word,
    paraphrases,
    render_scene,
    sample_scene,
    scene_from_meta,
    scene_to_meta,
    shape_mask,
    shapes_sample,
)

SIZES = (32, 48, 64, 128)


def test_palette_and_shapes_are_the_documented_ones():
    assert set(COLORS) == {"red", "green", "blue", "yellow", "purple", "cyan"}
    assert SHAPES == ("circle", "square", "triangle", "diamond")
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in COLORS.values())


@pytest.mark.parametrize("image_size", SIZES)
def test_sample_is_deterministic_and_well_formed(image_size):
    for index in range(20):
        image, caption, meta = shapes_sample(7, index, image_size)
        again = shapes_sample(7, index, image_size)
        assert image.dtype == np.uint8 and image.shape == (image_size, image_size, 3)
        assert np.array_equal(image, again[0]) and caption == again[1] and meta == again[2]
        assert meta["caption"] == caption
    captions = {shapes_sample(7, i, image_size)[1] for i in range(20)}
    assert len(captions) > 10  # different indices give different scenes


def test_different_seeds_give_different_data():
    a = [shapes_sample(0, i)[1] for i in range(30)]
    b = [shapes_sample(1, i)[1] for i in range(30)]
    assert a != b


def test_scene_kind_frequencies():
    rng = np.random.default_rng(0)
    kinds = Counter(sample_scene(rng, 32).kind for _ in range(3000))
    assert abs(kinds["single"] / 3000 - 0.4) < 0.04
    assert abs(kinds["count"] / 3000 - 0.3) < 0.04
    assert abs(kinds["relation"] / 3000 - 0.3) < 0.04


def test_scene_weights_change_the_mix_and_the_default_is_unchanged():
    kinds = Counter(shapes_sample(0, i, 32, [0.0, 0.2, 0.8])[2]["kind"] for i in range(1000))
    assert kinds["single"] == 0 and abs(kinds["relation"] / 1000 - 0.8) < 0.05
    # None, [] and the default weights draw the very same scenes
    for i in range(20):
        assert shapes_sample(0, i)[1] == shapes_sample(0, i, 32, [])[1] == shapes_sample(0, i, 32, [4, 3, 3])[1]
    with pytest.raises(DataError, match="3 numbers >= 0"):
        shapes_sample(0, 0, 32, [1, 2])


def _box(obj: ShapeObject) -> tuple[float, float, float, float]:
    half = obj.size / 2
    return obj.cx - half, obj.cy - half, obj.cx + half, obj.cy + half


@pytest.mark.parametrize("image_size", SIZES)
def test_layout_rules(image_size):
    for index in range(300):
        _, _, meta = shapes_sample(3, index, image_size)
        scene = scene_from_meta(meta)
        for obj in scene.objects:
            x0, y0, x1, y1 = _box(obj)
            assert x0 >= 1 and y0 >= 1 and x1 <= image_size - 1 and y1 <= image_size - 1
            assert obj.size >= 8
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1:]:
                ax0, ay0, ax1, ay1 = _box(a)
                bx0, by0, bx1, by1 = _box(b)
                # boxes apart by at least the 3 px gap along one axis
                assert ax1 + 3 <= bx0 or bx1 + 3 <= ax0 or ay1 + 3 <= by0 or by1 + 3 <= ay0
        if scene.kind == "count":
            assert 2 <= len(scene.objects) <= 3
            assert len({(o.shape, o.color, o.size) for o in scene.objects}) == 1
        if scene.kind == "relation":
            a, b = scene.objects
            assert (a.shape, a.color) != (b.shape, b.color)
            dx, dy = a.cx - b.cx, a.cy - b.cy
            size = max(a.size, b.size)
            along, across = {"left of": (-dx, dy), "right of": (dx, dy),
                             "above": (-dy, dx), "below": (dy, dx)}[scene.relation]
            assert along >= abs(across) + size


@pytest.mark.parametrize("image_size", (32, 64))
def test_render_is_hard_edged_and_objects_do_not_overlap(image_size):
    palette = {tuple(c) for c in COLORS.values()} | {(0, 0, 0)}
    for index in range(200):
        image, _, meta = shapes_sample(5, index, image_size)
        assert {tuple(p) for p in image.reshape(-1, 3)} <= palette
        masks = [shape_mask(o["shape"], o["cx"], o["cy"], o["size"], image_size, image_size)
                 for o in meta["objects"]]
        assert all(m.sum() > 20 for m in masks)
        assert np.sum(masks, axis=0).max() == 1  # no pixel belongs to two objects
        for obj, mask in zip(meta["objects"], masks):
            assert (image[mask] == COLORS[obj["color"]]).all()


@pytest.mark.parametrize("image_size", (32, 64))
def test_caption_parses_back_to_the_scene(image_size):
    for index in range(400):
        _, caption, meta = shapes_sample(11, index, image_size)
        spec = parse_caption(caption)
        assert spec is not None, caption
        assert spec.kind == meta["kind"] and spec.relation == meta["relation"]
        objects = meta["objects"]
        if meta["kind"] == "relation":
            assert spec.objects == [(1, o["color"], o["shape"]) for o in objects]
        else:
            assert spec.objects == [(len(objects), objects[0]["color"], objects[0]["shape"])]


def test_caption_wording():
    captions = {shapes_sample(0, i)[1] for i in range(400)}
    assert any(len(c.split()) == 3 and c.startswith("a ") for c in captions)  # "a red circle"
    assert any(c.startswith("two ") and c.endswith("s") for c in captions)
    assert any(c.startswith("three ") and c.endswith("s") for c in captions)
    assert any(" left of " in c for c in captions) and any(" below " in c for c in captions)


def test_paraphrases_say_the_same_of_the_image():
    seen = Counter()
    for index in range(200):
        image, caption, meta = shapes_sample(5, index)
        forms = paraphrases(caption)
        assert forms[0] == caption and len(set(forms)) == len(forms)
        assert len(forms) == (2 if meta["kind"] == "relation" else 1), caption
        for form in forms:  # the attribute reader finds every phrasing true of the picture
            assert score_image(image, form)["overall"], (caption, form)
        seen[len(forms)] += 1
    assert seen[1] and seen[2]
    assert paraphrases("a red circle above a blue square") == ["a red circle above a blue square",
                                                              "a blue square below a red circle"]
    assert paraphrases("the dog left of the tree") == ["the dog left of the tree"]  # not the grammar


def test_meta_round_trip_is_json_able():
    for index in range(50):
        _, caption, meta = shapes_sample(2, index)
        meta = json.loads(json.dumps(meta))
        scene = scene_from_meta(meta)
        assert isinstance(scene, Scene) and scene.caption == caption
        assert scene_from_meta(scene_to_meta(scene)) == scene
        assert np.array_equal(render_scene(scene, 32), shapes_sample(2, index)[0])


def test_errors_tell_what_to_do():
    assert [number_word(n) for n in (1, 2, 3)] == ["one", "two", "three"]
    with pytest.raises(DataError, match="1-3"):
        number_word(4)
    with pytest.raises(DataError, match="image_size"):
        shapes_sample(0, 0, image_size=16)
    with pytest.raises(DataError, match="objects"):
        scene_from_meta({"kind": "single"})
    with pytest.raises(DataError, match="shape"):
        shape_mask("hexagon", 5, 5, 4, 10, 10)

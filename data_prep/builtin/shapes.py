"""Procedurally rendered compositional images: colored shapes with exact captions.

Every sample is a pure function of (seed, index), so the data set needs no storage and no
download, and its captions are ground truth: `attributes.read_objects` can read any render back
exactly, which lets us score generated images (GenEval style) and test understanding.

Three scene kinds: one object ("a red circle"), 2-3 identical objects ("two green triangles"),
and two different objects in a spatial relation ("a red circle left of a blue square").
Objects are drawn with hard edges on a black background, never overlap, and keep a gap of a few
pixels so that blurred generations do not fuse them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from core.errors import DataError

# Saturated and far apart in hue, so the reader can tell them apart even after blur and noise.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 60, 230),
    "yellow": (235, 220, 30),
    "purple": (170, 40, 210),
    "cyan": (30, 210, 220),
}
# Black: blurring a shape into black only darkens it, it never shifts its hue.
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SCENE_KINDS: tuple[str, ...] = ("single", "count", "relation")
SCENE_PROBS: tuple[float, ...] = (0.4, 0.3, 0.3)
MIN_IMAGE_SIZE = 32
# Below ~8 px a triangle and a diamond are a handful of pixels and stop being distinguishable.
MIN_OBJECT_SIZE = 8
_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# Object side as a fraction of the image side, per scene layout.
_SIZE_FRACTIONS = {"single": (0.30, 0.42), "count2": (0.22, 0.30), "count3": (0.20, 0.26),
                   "relation": (0.22, 0.30)}
_MAX_TRIES = 400


@dataclass
class ShapeObject:
    """One shape: center (cx, cy) in pixels, `size` = side of its square bounding box in pixels."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float


@dataclass
class Scene:
    """A rendered scene and its caption; `relation` describes objects[0] relative to objects[1]."""

    kind: str
    objects: list[ShapeObject] = field(default_factory=list)
    relation: str | None = None
    caption: str = ""


def number_word(n: int) -> str:
    """'one', 'two' or 'three': scenes hold at most three objects."""
    if n not in _NUMBER_WORDS:
        raise DataError(f"number_word supports counts 1-3, got {n}; scenes hold at most 3 objects")
    return _NUMBER_WORDS[n]


def noun_phrase(count: int, color: str, shape: str) -> str:
    """'a red circle' for one object, 'two red circles' for more."""
    if count == 1:
        return f"a {color} {shape}"
    return f"{number_word(count)} {color} {shape}s"


def caption_for(scene: Scene) -> str:
    """The caption that `scene`'s kind, objects and relation imply."""
    objs = scene.objects
    if scene.kind == "single":
        return noun_phrase(1, objs[0].color, objs[0].shape)
    if scene.kind == "count":
        return noun_phrase(len(objs), objs[0].color, objs[0].shape)
    if scene.kind == "relation":
        a, b = objs
        first, second = noun_phrase(1, a.color, a.shape), noun_phrase(1, b.color, b.shape)
        return f"{first} {scene.relation} {second}"
    raise DataError(f"unknown scene kind {scene.kind!r}; use one of {', '.join(SCENE_KINDS)}")


_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def paraphrases(caption: str) -> list[str]:
    """Every caption of the shapes grammar that says the same: a relation named from either
    object ("a red circle left of a blue square" = "a blue square right of a red circle");
    other captions (and text outside the grammar) have one form. The caption comes first."""
    for relation in RELATIONS:
        first, sep, second = caption.partition(f" {relation} ")
        if sep and _is_one_object(first) and _is_one_object(second):
            return [caption, f"{second} {_INVERSE[relation]} {first}"]
    return [caption]


def _is_one_object(phrase: str) -> bool:
    words = phrase.split()
    return len(words) == 3 and words[0] == "a" and words[1] in COLORS and words[2] in SHAPES


def _check_image_size(image_size: int) -> None:
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise DataError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size}; "
                        f"use 32, 48, 64 or 128")


def _gap(image_size: int) -> int:
    """Empty pixels kept between objects, so a blur in generated images does not join them."""
    return max(3, round(0.06 * image_size))


def _size_range(layout: str, image_size: int) -> tuple[int, int]:
    lo_f, hi_f = _SIZE_FRACTIONS[layout]
    lo = max(MIN_OBJECT_SIZE, round(lo_f * image_size))
    return lo, max(lo, round(hi_f * image_size))


def _random_box(rng: np.random.Generator, size: int, image_size: int) -> tuple[int, int]:
    """Integer top-left corner so the box stays inside with a 1 px margin (pixel-exact edges)."""
    hi = image_size - 1 - size  # inclusive: the box ends at hi + size = image_size - 1
    return int(rng.integers(1, hi + 1)), int(rng.integers(1, hi + 1))


def _separated(a: tuple[int, int, int], b: tuple[int, int, int], gap: int) -> bool:
    """Boxes (x0, y0, size) are apart by at least `gap` pixels along x or along y."""
    (ax, ay, asz), (bx, by, bsz) = a, b
    return (ax + asz + gap <= bx or bx + bsz + gap <= ax
            or ay + asz + gap <= by or by + bsz + gap <= ay)


def _place(rng: np.random.Generator, n: int, layout: str, image_size: int,
           relation: str | None = None) -> list[tuple[int, int, int]]:
    """Boxes (x0, y0, size) for n objects of one size, non-overlapping, relation-consistent.

    Rejection sampling; if a size does not fit after many tries it shrinks by a pixel, so the
    draw stays deterministic for a given rng state and always terminates.
    """
    lo, hi = _size_range(layout, image_size)
    size = int(rng.integers(lo, hi + 1))
    gap = _gap(image_size)
    while size >= MIN_OBJECT_SIZE:
        for _ in range(_MAX_TRIES):
            boxes = [(*_random_box(rng, size, image_size), size) for _ in range(n)]
            if not all(_separated(boxes[i], boxes[j], gap)
                       for i in range(n) for j in range(i + 1, n)):
                continue
            if relation is not None and not _relation_holds(boxes[0], boxes[1], relation, size):
                continue
            return boxes
        size -= 1
    raise DataError(f"cannot place {n} objects in a {image_size} px image; use image_size >= "
                    f"{MIN_IMAGE_SIZE}")


def _relation_holds(a: tuple[int, int, int], b: tuple[int, int, int], relation: str,
                    size: int) -> bool:
    """The stated axis dominates by at least one object size, so the relation is unambiguous."""
    dx, dy = a[0] - b[0], a[1] - b[1]  # same size, so corner offsets equal center offsets
    if relation == "left of":
        return -dx >= abs(dy) + size
    if relation == "right of":
        return dx >= abs(dy) + size
    if relation == "above":
        return -dy >= abs(dx) + size
    if relation == "below":
        return dy >= abs(dx) + size
    raise DataError(f"unknown relation {relation!r}; use one of {', '.join(RELATIONS)}")


def _to_object(shape: str, color: str, box: tuple[int, int, int]) -> ShapeObject:
    x0, y0, size = box
    return ShapeObject(shape=shape, color=color, cx=x0 + size / 2, cy=y0 + size / 2,
                       size=float(size))


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def sample_scene(rng: np.random.Generator, image_size: int,
                 scene_probs: tuple[float, ...] = SCENE_PROBS) -> Scene:
    """Draw one scene: by default single 40%, count 30% (2 or 3 identical objects), relation 30%."""
    _check_image_size(image_size)
    colors = list(COLORS)
    kind = SCENE_KINDS[int(rng.choice(len(SCENE_KINDS), p=scene_probs))]
    relation = None
    if kind == "single":
        shape, color = _pick(rng, SHAPES), _pick(rng, colors)
        objects = [_to_object(shape, color, _place(rng, 1, "single", image_size)[0])]
    elif kind == "count":
        n = int(rng.integers(2, 4))
        shape, color = _pick(rng, SHAPES), _pick(rng, colors)
        objects = [_to_object(shape, color, box)
                   for box in _place(rng, n, f"count{n}", image_size)]
    else:
        relation = _pick(rng, RELATIONS)
        first = (_pick(rng, SHAPES), _pick(rng, colors))
        second = first
        while second == first:  # the two objects must be tellable apart by color or shape
            second = (_pick(rng, SHAPES), _pick(rng, colors))
        boxes = _place(rng, 2, "relation", image_size, relation)
        objects = [_to_object(*first, boxes[0]), _to_object(*second, boxes[1])]
    scene = Scene(kind=kind, objects=objects, relation=relation)
    scene.caption = caption_for(scene)
    return scene


def shape_mask(shape: str, cx: float, cy: float, size: float, height: int,
               width: int) -> np.ndarray:
    """Boolean (H, W) mask of pixels whose centers lie inside the shape (no antialiasing)."""
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    dx, dy, half = xs - cx, ys - cy, size / 2
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= half
    if shape == "triangle":
        # Apex up. Row r of the box (pixel center at r + 0.5 below the top) gets half-width
        # (r + 1) / 2, so the top row holds 1-2 pixels and the bottom row spans the whole box.
        below_top = dy + half
        return (below_top >= 0) & (dy <= half) & (np.abs(dx) <= (below_top + 0.5) / 2)
    raise DataError(f"unknown shape {shape!r}; use one of {', '.join(SHAPES)}")


def render_objects(objects: list[ShapeObject], image_size: int) -> np.ndarray:
    """Draw objects on the background; later objects paint over earlier ones."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[...] = BACKGROUND
    for obj in objects:
        if obj.color not in COLORS:
            raise DataError(f"unknown color {obj.color!r}; use one of {', '.join(COLORS)}")
        mask = shape_mask(obj.shape, obj.cx, obj.cy, obj.size, image_size, image_size)
        image[mask] = COLORS[obj.color]
    return image


def render_scene(scene: Scene, image_size: int) -> np.ndarray:
    """uint8 (H, W, 3) image of the scene, hard edges so pixel reading is exact."""
    _check_image_size(image_size)
    return render_objects(scene.objects, image_size)


def scene_to_meta(scene: Scene) -> dict:
    """JSON-able dict: kind, relation, caption and the objects as plain dicts."""
    return {"kind": scene.kind, "relation": scene.relation, "caption": scene.caption,
            "objects": [asdict(obj) for obj in scene.objects]}


def scene_from_meta(meta: dict) -> Scene:
    """Inverse of `scene_to_meta`; extra keys (seed, index, image_size) are ignored."""
    try:
        objects = [ShapeObject(shape=str(o["shape"]), color=str(o["color"]), cx=float(o["cx"]),
                               cy=float(o["cy"]), size=float(o["size"]))
                   for o in meta["objects"]]
        return Scene(kind=str(meta["kind"]), objects=objects, relation=meta.get("relation"),
                     caption=str(meta.get("caption", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"shapes meta is malformed ({exc!r}); it needs 'kind' and 'objects' with "
                        f"shape, color, cx, cy, size, as written by scene_to_meta") from exc


def scene_probabilities(weights: list[float] | tuple[float, ...] | None) -> tuple[float, ...]:
    """Normalised (single, count, relation) weights; empty or None = the default SCENE_PROBS."""
    if not weights:
        return SCENE_PROBS
    if len(weights) != len(SCENE_KINDS) or min(weights) < 0 or sum(weights) <= 0:
        raise DataError(f"scene weights must be {len(SCENE_KINDS)} numbers >= 0 for {', '.join(SCENE_KINDS)} "
                        f"(not all 0), got {list(weights)}")
    total = float(sum(weights))
    return tuple(float(w) / total for w in weights)


def shapes_sample(seed: int, index: int, image_size: int = 32,
                  scene_weights: list[float] | tuple[float, ...] | None = None) -> tuple[np.ndarray, str, dict]:
    """Sample `index` of the shapes set with `seed`: (image, caption, meta), fully deterministic.
    `scene_weights` (single, count, relation) changes the mix of scene kinds; None = default."""
    if seed < 0 or index < 0:
        raise DataError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, image_size, scene_probabilities(scene_weights))
    meta = scene_to_meta(scene)
    meta.update(seed=int(seed), index=int(index), image_size=int(image_size))
    return render_scene(scene, image_size), scene.caption, meta

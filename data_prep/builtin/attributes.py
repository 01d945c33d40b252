"""Attribute reader for shapes images: pixel analysis, no learning; GenEval-style scoring.

`read_objects` finds the colored shapes in an image, `parse_caption` turns a caption of the
shapes grammar into a spec, and `score_image` checks an image against a caption (object, color,
count, position). `describe` goes the other way, writing the caption for what is seen, so
understanding (image -> text) can be scored with the same grammar.

Robustness to generated images: a pixel takes a palette color when its hue points the same way
and it has at least half that color's brightness. On a black background a blur only scales a
color down, so the half-brightness contour sits where the hard edge was and shapes keep their
geometry. Noise specks are dropped by a minimum area and holes are filled. The shape is then
read from the object's soft coverage (its rim included), which a blur does not destroy the way
it rounds off a thresholded mask: each candidate is drawn with the object's mass and centroid
and the one with the smallest squared error wins.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from core.errors import DataError
from data_prep.builtin.shapes import COLORS, RELATIONS, SHAPES, noun_phrase

_PALETTE_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[c] for c in _PALETTE_NAMES], dtype=np.float64)
_PALETTE_UNIT = _PALETTE / np.linalg.norm(_PALETTE, axis=1, keepdims=True)
# cos(angle) to the nearest palette hue. The closest palette pairs (blue-cyan, blue-purple) are
# ~29 deg apart and gray is >= 27 deg from every entry; 0.96 (~16 deg) leaves room for noise.
MIN_COSINE = 0.96
# Fraction of the palette color's brightness: the half-coverage contour of a blurred edge.
MIN_BRIGHTNESS = 0.5
# Components smaller than this fraction of the image are noise (smallest object is ~3.5%).
MIN_AREA_FRACTION = 0.005
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
# Pixels around an object that still carry its blurred rim.
_PAD = 2


@dataclass
class DetectedObject:
    """One connected component of one palette color; centroid in pixels, area in pixels."""

    shape: str
    color: str
    cx: float
    cy: float
    area: int


@dataclass
class CaptionSpec:
    """A parsed caption: objects as (count, color, shape); relation of objects[0] to objects[1]."""

    kind: str
    objects: list[tuple[int, str, str]]
    relation: str | None


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 8 or image.shape[1] < 8:
        raise DataError(f"expected an RGB image of shape (H, W, 3) with H, W >= 8, got "
                        f"{image.shape}; convert grayscale or RGBA images to RGB first")
    if image.dtype != np.uint8:
        raise DataError(f"expected a uint8 image, got {image.dtype}; scale floats in [0, 1] by "
                        f"255 and cast with np.clip(x * 255, 0, 255).astype(np.uint8)")
    return image


def color_labels(image: np.ndarray) -> np.ndarray:
    """(H, W) int array: palette index of each pixel, or -1 for background."""
    pixels = _check_image(image).astype(np.float64)
    norms = np.linalg.norm(pixels, axis=2)
    cosines = pixels @ _PALETTE_UNIT.T / np.maximum(norms, 1e-6)[..., None]
    best = np.argmax(cosines, axis=2)
    best_cos = np.take_along_axis(cosines, best[..., None], axis=2)[..., 0]
    # Brightness along the chosen hue, relative to the palette color's own brightness.
    brightness = best_cos * norms / np.linalg.norm(_PALETTE, axis=1)[best]
    return np.where((best_cos >= MIN_COSINE) & (brightness >= MIN_BRIGHTNESS), best, -1)


_AREA_FACTORS = {"square": 1.0, "circle": np.pi / 4, "diamond": 0.5, "triangle": 0.5}
_SUPERSAMPLE = 4
# Blurs the observed patch may have been through; each template is compared under each of them.
_BLURS = (None, 3)


def _coverage(shape: str, cx: float, cy: float, size: float, height: int,
              width: int) -> np.ndarray:
    """Fraction of each pixel covered by the continuous shape (supersampled)."""
    k = _SUPERSAMPLE
    ys = (np.arange(height * k, dtype=np.float64)[:, None] + 0.5) / k - cy
    xs = (np.arange(width * k, dtype=np.float64)[None, :] + 0.5) / k - cx
    half = size / 2
    if shape == "square":
        inside = (np.abs(xs) <= half) & (np.abs(ys) <= half)
    elif shape == "circle":
        inside = xs * xs + ys * ys <= half * half
    elif shape == "diamond":
        inside = np.abs(xs) + np.abs(ys) <= half
    else:  # triangle, apex up
        inside = (ys >= -half) & (ys <= half) & (np.abs(xs) <= (ys + half) / 2)
    return inside.reshape(height, k, width, k).mean(axis=(1, 3))


def classify_shape(alpha: np.ndarray) -> str:
    """Shape that best explains a coverage patch (values in [0, 1], one object, black around it).

    Blur on a black background keeps an object's mass (total coverage) and its centroid, so each
    candidate is drawn with the area and centroid of the patch (a triangle's centroid sits s/6
    below its box center) and compared by squared error, sharp and box-blurred; the best wins.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    mass = alpha.sum()
    if mass <= 0:
        raise DataError("classify_shape got an empty patch; pass the coverage of one object")
    ys, xs = np.indices(alpha.shape, dtype=np.float64)
    my, mx = (alpha * (ys + 0.5)).sum() / mass, (alpha * (xs + 0.5)).sum() / mass
    best, best_err = SHAPES[0], np.inf
    for shape in SHAPES:
        size = float(np.sqrt(mass / _AREA_FACTORS[shape]))
        cy = my - size / 6 if shape == "triangle" else my
        template = _coverage(shape, mx, cy, size, *alpha.shape)
        for blur in _BLURS:
            candidate = template if blur is None else ndimage.uniform_filter(
                template, size=blur, mode="constant")
            err = float(((candidate - alpha) ** 2).sum())
            if err < best_err:
                best, best_err = shape, err
    return best


def _alpha(pixels: np.ndarray, color_index: int) -> np.ndarray:
    """Brightness of each pixel along one palette hue, 1.0 = the palette color itself."""
    unit = _PALETTE_UNIT[color_index]
    return np.clip(pixels @ unit / np.linalg.norm(_PALETTE[color_index]), 0.0, None)


def _components(labels: np.ndarray, min_area: int) -> list[tuple[int, np.ndarray]]:
    """(palette index, full-size mask) of each connected component of at least min_area."""
    components = []
    for color_index in np.unique(labels):
        if color_index < 0:
            continue
        labelled, count = ndimage.label(labels == color_index, structure=_EIGHT_CONNECTED)
        for label in range(1, count + 1):
            # Noise inside a blurry object can punch holes; they are not part of the geometry.
            mask = ndimage.binary_fill_holes(labelled == label)
            if mask.sum() >= min_area:
                components.append((int(color_index), mask))
    return components


def read_objects(image: np.ndarray) -> list[DetectedObject]:
    """The palette-colored shapes in an RGB uint8 image, largest first."""
    labels = color_labels(image)
    pixels = np.asarray(image).astype(np.float64)
    height, width = labels.shape
    components = _components(labels, max(4, int(MIN_AREA_FRACTION * height * width)))
    found: list[DetectedObject] = []
    for i, (color_index, mask) in enumerate(components):
        rows, cols = np.nonzero(mask)
        # Work in a crop around the object; the margin covers its rim and a neighbor's rim.
        margin = 2 * _PAD + 1
        box = np.s_[max(rows.min() - margin, 0):rows.max() + margin + 1,
                    max(cols.min() - margin, 0):cols.max() + margin + 1]
        # The soft patch: the object's blurred rim, but not the rims of its neighbors.
        region = ndimage.binary_dilation(mask[box], structure=_EIGHT_CONNECTED, iterations=_PAD)
        for j, (_, other) in enumerate(components):
            if j != i and other[box].any():
                region &= ~ndimage.binary_dilation(other[box], structure=_EIGHT_CONNECTED)
        alpha = _alpha(pixels[box], color_index)
        # Generated colors can be darker or brighter than the palette: the interior is 1.0.
        alpha = np.clip(alpha / max(float(np.median(alpha[mask[box]])), 1e-6), 0.0, 1.0)
        alpha[~region] = 0.0
        if alpha.sum() <= 0:  # a generated image can hold a colored speck with no usable coverage
            continue
        found.append(DetectedObject(
            shape=classify_shape(alpha), color=_PALETTE_NAMES[color_index],
            cx=float(cols.mean() + 0.5), cy=float(rows.mean() + 0.5), area=int(rows.size)))
    found.sort(key=lambda o: (-o.area, o.cy, o.cx))
    return found


# --- captions -------------------------------------------------------------------------------

_NUMBERS = {"a": 1, "an": 1, "one": 1, "1": 1, "two": 2, "2": 2, "three": 3, "3": 3}
_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_NUMBER_RE = "|".join(_NUMBERS)
_NP = rf"({_NUMBER_RE}) ({_COLOR_RE}) ({_SHAPE_RE})s?"
# "to the left of" and "on the left of" are accepted for model captions; stored as "left of".
_RELATION_RE = r"(?:to the |on the )?(left of|right of)|(above|below)"
_SINGLE_OR_COUNT = re.compile(rf"^{_NP}$")
_RELATION = re.compile(rf"^{_NP} (?:{_RELATION_RE}) {_NP}$")


def _normalize(caption: str) -> str:
    text = re.sub(r"\s+", " ", caption.strip().lower())
    return text.rstrip(" .!").strip()


def parse_caption(caption: str) -> CaptionSpec | None:
    """Spec of a caption in the shapes grammar, or None when it does not follow the grammar.

    Tolerant of case, extra whitespace, a trailing period, "an"/digits for numbers and plural
    agreement ("two red circle" parses), since it also reads captions a model wrote.
    """
    if not isinstance(caption, str):
        return None
    text = _normalize(caption)
    match = _SINGLE_OR_COUNT.match(text)
    if match:
        count = _NUMBERS[match.group(1)]
        return CaptionSpec(kind="single" if count == 1 else "count",
                           objects=[(count, match.group(2), match.group(3))], relation=None)
    match = _RELATION.match(text)
    if match:
        n0, c0, s0, horizontal, vertical, n1, c1, s1 = match.groups()
        if _NUMBERS[n0] != 1 or _NUMBERS[n1] != 1:
            return None  # relations are between two single objects in this grammar
        return CaptionSpec(kind="relation", objects=[(1, c0, s0), (1, c1, s1)],
                           relation=horizontal or vertical)
    return None


def relation_holds(a: DetectedObject, b: DetectedObject, relation: str) -> bool:
    """`a` is `relation` `b` by centroids: right sign on the stated axis, which dominates."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if relation == "left of":
        return dx < 0 and abs(dx) >= abs(dy)
    if relation == "right of":
        return dx > 0 and abs(dx) >= abs(dy)
    if relation == "above":
        return dy < 0 and abs(dy) >= abs(dx)
    if relation == "below":
        return dy > 0 and abs(dy) >= abs(dx)
    raise DataError(f"unknown relation {relation!r}; use one of {', '.join(RELATIONS)}")


def score_objects(objects: list[DetectedObject], spec: CaptionSpec) -> dict[str, bool | None]:
    """GenEval-style checks of detected objects against a parsed caption (see `score_image`)."""
    by_shape = Counter(o.shape for o in objects)
    by_color_shape = Counter((o.color, o.shape) for o in objects)
    need_shape: Counter[str] = Counter()
    need_color_shape: Counter[tuple[str, str]] = Counter()
    for count, color, shape in spec.objects:
        need_shape[shape] += count
        need_color_shape[(color, shape)] += count
    result: dict[str, bool | None] = {
        "object": all(by_shape[s] >= n for s, n in need_shape.items()),
        "color": all(by_color_shape[k] >= n for k, n in need_color_shape.items()),
        "count": all(by_color_shape[k] == n for k, n in need_color_shape.items())
        and (spec.kind == "relation" or len(objects) == sum(need_color_shape.values())),
        "position": None,
    }
    if spec.relation is not None:
        # objects are sorted largest first, so each side takes its most prominent match
        firsts = [next((o for o in objects if (o.color, o.shape) == (c, s)), None)
                  for _, c, s in spec.objects]
        result["position"] = (None not in firsts
                              and relation_holds(firsts[0], firsts[1], spec.relation))
    result["overall"] = all(v for v in result.values() if v is not None)
    return result


def score_image(image: np.ndarray, caption: str) -> dict[str, bool | None]:
    """Check an image against a shapes caption.

    Keys: "object" (every requested shape present, any color), "color" (present in the
    requested color), "count" (exactly the requested number of that color+shape and, for
    single/count captions, no other objects), "position" (relation holds by centroids; None
    without a relation) and "overall" (every non-None check passed).
    """
    spec = parse_caption(caption)
    if spec is None:
        raise DataError(f"caption {caption!r} is not in the shapes grammar; expected e.g. "
                        f"'a red circle', 'two blue squares' or 'a red circle left of a blue "
                        f"square'")
    return score_objects(read_objects(image), spec)


def describe(objects: list[DetectedObject]) -> str | None:
    """Caption in the shapes grammar for what was seen, or None when the grammar cannot say it.

    1-3 identical objects give "a red circle" / "two red circles"; two different objects give a
    relation along their dominant axis, naming the left (or upper) object first.
    """
    if not objects or len(objects) > 3:
        return None
    kinds = {(o.color, o.shape) for o in objects}
    if len(kinds) == 1:
        return noun_phrase(len(objects), objects[0].color, objects[0].shape)
    if len(objects) != 2:
        return None
    a, b = objects
    if abs(a.cx - b.cx) >= abs(a.cy - b.cy):
        first, second = (a, b) if a.cx <= b.cx else (b, a)
        relation = "left of"
    else:
        first, second = (a, b) if a.cy <= b.cy else (b, a)
        relation = "above"
    return (f"{noun_phrase(1, first.color, first.shape)} {relation} "
            f"{noun_phrase(1, second.color, second.shape)}")

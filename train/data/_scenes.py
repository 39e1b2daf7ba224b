"""Scenes of the embedded benchmark: what is in each picture and in which style it is drawn.

Class ``c`` is the silhouette ``CLASS_SHAPES[c]``; colour, texture, background, size, position and
rotation are nuisances. In photo-like ("natural") scenes each class has a preferred texture and hue
(``preferred_style``) worn with probability ``Domain.pref_prob`` -- the texture shortcut. Sketches
and renditions keep only the shape. Every function returns a uint8 image [size, size, 3].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ._shapes import CLASS_SHAPES, outline, shape_mask
from ._styles import (
    N_HUES,
    TEXTURES,
    background,
    composite,
    fill,
    hsv,
    object_palette,
    smooth_noise,
    texture,
    to_uint8,
)

NUM_CLASSES = len(CLASS_SHAPES)
RENDITIONS: tuple[str, ...] = ("cartoon", "pixelart", "painting", "embroidery")


@dataclass(frozen=True)
class Domain:
    """The nuisance distribution of photo-like images of one split.

    Attributes:
        pref_prob: probability that an object wears its class's preferred texture and hue.
        decoys: classes whose preferred style an object wears instead (with ``decoy_prob``).
        decoy_prob: probability of a misleading style taken from ``decoys``.
        radius: range of the object radius as a fraction of the image size.
        hue_jitter: standard deviation of hue noise (fraction of the hue circle).
        value_shift: brightness shift added to object and background colours.
        second_prob: probability of a second, smaller object of another class.
        ambiguous_prob: probability that the object is made unrecognisable (tiny or occluded).
        clutter: number of distractor strokes drawn around (and over) the object.
    """

    pref_prob: float = 0.7
    decoys: tuple[int, ...] = ()
    decoy_prob: float = 0.0
    radius: tuple[float, float] = (0.25, 0.45)
    hue_jitter: float = 0.03
    value_shift: float = 0.0
    second_prob: float = 0.12
    ambiguous_prob: float = 0.04
    clutter: int = 0


def preferred_style(label: int) -> tuple[int, int]:
    """The (texture index, hue index) that class ``label`` prefers; distinct for all 20 classes."""
    return label % len(TEXTURES), (3 * label + 5 * (label // len(TEXTURES))) % N_HUES


def _pick_style(rng: np.random.Generator, label: int, domain: Domain) -> tuple[int, int]:
    r, others = rng.random(), [d for d in domain.decoys if d != label]
    if r < domain.decoy_prob and others:
        return preferred_style(int(rng.choice(others)))
    if r < domain.decoy_prob + domain.pref_prob:
        return preferred_style(label)
    return int(rng.integers(len(TEXTURES))), int(rng.integers(N_HUES))


def _place(rng: np.random.Generator, size: int, radius: float) -> tuple[float, float]:
    margin = min(0.8 * radius, size / 2)
    return float(rng.uniform(margin, size - margin)), float(rng.uniform(margin, size - margin))


def _pose(rng: np.random.Generator) -> dict[str, float]:
    return {"angle": float(rng.uniform(-25.0, 25.0)), "stretch": float(rng.uniform(0.85, 1.15))}


def _draw_object(
    rng: np.random.Generator,
    image: np.ndarray,
    shape: str,
    style: tuple[int, int],
    center: tuple[float, float],
    radius: float,
    domain: Domain,
    backdrop: float,
) -> np.ndarray:
    size = image.shape[0]
    mask = shape_mask(shape, size, center, radius, **_pose(rng))
    base, shade = object_palette(rng, style[1], domain.hue_jitter, domain.value_shift, backdrop)
    image = composite(image, fill(texture(rng, TEXTURES[style[0]], size), base, shade), mask)
    if rng.random() < 0.5:
        line = hsv(0.0, 0.0, rng.choice([0.05, 0.95]))
        image = composite(image, line, outline(mask, 1) * (1.0 - mask))
    return image


def _clutter(rng: np.random.Generator, image: np.ndarray, strokes: int) -> np.ndarray:
    size = image.shape[0]
    for _ in range(strokes):
        layer = Image.new("L", (size, size), 0)
        pts = [tuple(p) for p in rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 5)), 2)).tolist()]
        ImageDraw.Draw(layer).line(pts, fill=255, width=int(rng.integers(2, max(3, size // 10))))
        kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
        colours = object_palette(rng, rng.uniform(0, N_HUES))
        image = composite(
            image, fill(texture(rng, kind, size), *colours), np.asarray(layer, np.float32) / 255
        )
    return image


def natural(
    rng: np.random.Generator, label: int, size: int, domain: Domain, shape: str | None = None
) -> tuple[np.ndarray, list[int]]:
    """A photo-like image of class ``label`` drawn from ``domain``.

    Args:
        label: class index; its silhouette is drawn unless ``shape`` names another one (the
            held-out shapes of the OOD set), and its preferred style is used either way.
        size: image side in pixels.

    Returns:
        (uint8 image [size, size, 3], classes present: the label first, then a second object's class
        if any; empty when the image was made deliberately ambiguous).
    """
    image = background(rng, size, domain.value_shift)
    backdrop = float(image.max(-1).mean())  # HSV value of the background; objects keep away from it
    image = _clutter(rng, image, domain.clutter // 2)
    radius = rng.uniform(*domain.radius) * size
    center = _place(rng, size, radius)
    ambiguous = rng.random() < domain.ambiguous_prob
    tiny = ambiguous and rng.random() < 0.5
    objects = [(shape or CLASS_SHAPES[label], label, center, 0.06 * size if tiny else radius)]
    if rng.random() < domain.second_prob:
        other = int(rng.choice([c for c in range(NUM_CLASSES) if c != label]))
        r2 = radius * rng.uniform(0.45, 0.7)
        c2 = max(
            (_place(rng, size, r2) for _ in range(4)),
            key=lambda c: np.hypot(c[0] - center[0], c[1] - center[1]),
        )
        objects.insert(int(rng.integers(2)), (CLASS_SHAPES[other], other, c2, r2))  # behind or in front
    for obj_shape, obj_label, obj_center, obj_radius in objects:
        style = _pick_style(rng, obj_label, domain)
        image = _draw_object(rng, image, obj_shape, style, obj_center, obj_radius, domain, backdrop)
    if ambiguous and not tiny:
        image = _occlude(rng, image, center, radius)
    image = _clutter(rng, image, domain.clutter - domain.clutter // 2)
    present = [label, *(obj[1] for obj in objects if obj[1] != label)]
    return to_uint8(image), [] if ambiguous else present


def _occlude(
    rng: np.random.Generator, image: np.ndarray, center: tuple[float, float], radius: float
) -> np.ndarray:
    """Cover most of the object with an opaque textured blob."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wobble = smooth_noise(rng, size, 5) * 0.5 * radius
    blob = (np.hypot(xx - center[0], yy - center[1]) < 0.95 * radius + wobble).astype(np.float32)
    colours = object_palette(rng, rng.uniform(0, N_HUES))
    return composite(
        image, fill(texture(rng, TEXTURES[int(rng.integers(len(TEXTURES)))], size), *colours), blob
    )


def _object_mask(rng: np.random.Generator, label: int, size: int, radius: tuple[float, float]) -> np.ndarray:
    r = rng.uniform(*radius) * size
    return shape_mask(CLASS_SHAPES[label], size, _place(rng, size, r), r, **_pose(rng))


def sketch(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """A line drawing: dark outline of the silhouette (sometimes traced twice) on near-white paper."""
    paper = np.full((size, size, 3), rng.uniform(0.9, 1.0), np.float32)
    ink = hsv(0.0, 0.0, rng.uniform(0.0, 0.3))
    r = rng.uniform(0.25, 0.45) * size
    center, pose = _place(rng, size, r), _pose(rng)
    width = int(rng.integers(1, 3))
    image = composite(paper, ink, outline(shape_mask(CLASS_SHAPES[label], size, center, r, **pose), width))
    if rng.random() < 0.5:
        shifted = (center[0] + rng.normal(0, 0.7), center[1] + rng.normal(0, 0.7))
        retrace = outline(
            shape_mask(CLASS_SHAPES[label], size, shifted, r * rng.uniform(0.97, 1.03), **pose), 1
        )
        image = composite(image, ink, 0.6 * retrace)
    return to_uint8(image)


def rendition(rng: np.random.Generator, label: int, size: int, style: str) -> np.ndarray:
    """The silhouette of ``label`` in an artistic ``style`` (one of ``RENDITIONS``), random colours."""
    if style == "cartoon":
        mask = _object_mask(rng, label, size, (0.25, 0.42))
        image = np.broadcast_to(
            hsv(rng.random(), rng.uniform(0.1, 0.4), rng.uniform(0.85, 1.0)), (size, size, 3)
        )
        image = composite(image, hsv(rng.random(), rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)), mask)
        return to_uint8(composite(image, hsv(0.0, 0.0, 0.05), outline(mask, 3)))
    if style == "pixelart":
        small = max(8, size // 4)
        mask = (_object_mask(rng, label, small, (0.3, 0.45)) > 0.5).astype(np.float32)
        bg = fill(texture(rng, "checker", small) * 0.3, hsv(rng.random(), 0.3, 0.8), hsv(0.0, 0.0, 0.6))
        image = composite(bg, hsv(rng.random(), 0.9, 0.9), mask)
        image = composite(image, hsv(0.0, 0.0, 0.1), (outline(mask, 1) * (1 - mask) > 0.5).astype(np.float32))
        pixels = Image.fromarray(to_uint8(image)).resize((size, size), Image.Resampling.NEAREST)
        return np.asarray(pixels)
    if style == "painting":
        mask = _object_mask(rng, label, size, (0.25, 0.42))
        image = _strokes(rng, size, hsv(rng.random(), rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.9)))
        image = composite(image, _strokes(rng, size, hsv(rng.random(), 0.8, 0.8)), mask)
        painted = Image.fromarray(to_uint8(image)).filter(ImageFilter.GaussianBlur(0.6))
        return np.asarray(painted)
    if style == "embroidery":
        return _embroidery(rng, label, size)
    raise KeyError(f"unknown rendition style {style!r}; choose one of {RENDITIONS}")


def _strokes(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """Brush strokes in shades around ``colour`` covering the whole canvas: float [size, size, 3]."""
    canvas = Image.new("RGB", (size, size), tuple(int(c * 255) for c in colour))
    draw = ImageDraw.Draw(canvas)
    for _ in range(size):
        x, y = rng.uniform(0, size, 2)
        length, theta = rng.uniform(3, 9) * size / 64, rng.uniform(0, np.pi)
        shade = np.clip(colour + rng.normal(0, 0.12, 3), 0, 1)
        end = (x + length * np.cos(theta), y + length * np.sin(theta))
        draw.line([(x, y), end], fill=tuple(int(c * 255) for c in shade), width=int(rng.integers(2, 4)))
    return np.asarray(canvas, np.float32) / 255.0


def _embroidery(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """Cross-stitches on woven fabric, one stitch per cell covered by the silhouette."""
    cell = max(3, size // 16)
    mask = _object_mask(rng, label, size, (0.3, 0.45))
    fabric = fill(
        texture(rng, "grid", size) * 0.25, hsv(rng.uniform(0.05, 0.15), 0.15, 0.92), hsv(0.1, 0.2, 0.6)
    )
    canvas = Image.fromarray(to_uint8(fabric))
    draw = ImageDraw.Draw(canvas)
    thread = hsv(rng.random(), 0.85, 0.75)
    edge = outline(mask, 2)
    for y in range(0, size - cell + 1, cell):
        for x in range(0, size - cell + 1, cell):
            cy, cx = y + cell // 2, x + cell // 2
            if mask[cy, cx] < 0.5:
                continue
            colour = thread * (0.5 if edge[cy, cx] > 0.5 else rng.uniform(0.9, 1.1))
            rgb = tuple(int(c) for c in np.clip(colour * 255, 0, 255))
            draw.line([(x, y), (x + cell - 1, y + cell - 1)], fill=rgb)
            draw.line([(x + cell - 1, y), (x, y + cell - 1)], fill=rgb)
    return np.asarray(canvas)

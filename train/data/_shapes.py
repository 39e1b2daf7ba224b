"""Shape geometry for the embedded benchmark: the class-defining silhouettes and their masks.

A shape is a list of drawing operations in unit coordinates (the shape fits the disk of radius 1
around the origin, y pointing down). ``shape_mask`` places it in an image (centre, radius,
rotation, stretch) and rasterises it with 2x supersampling into a soft mask in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

_SUPERSAMPLE = 2


@dataclass(frozen=True)
class Op:
    """One drawing operation: a filled polygon, or a polyline of ``width`` (unit coordinates).

    ``fill`` is True to add the area to the shape and False to cut it out (holes).
    """

    points: np.ndarray
    fill: bool = True
    width: float = 0.0


def _arc(radius: float, t0: float, t1: float, cx: float = 0.0, cy: float = 0.0, n: int = 32) -> np.ndarray:
    t = np.linspace(t0, t1, n)
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def _circle(radius: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    return _arc(radius, 0.0, 2.0 * np.pi, cx, cy, n=41)[:-1]


def _regular(n: int, radius: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2.0 * np.pi / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _star(n: int, outer: float, inner: float) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * n) * np.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _poly(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=float)


def _heart() -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 16.5


def _spiral() -> np.ndarray:
    t = np.linspace(0.0, 2.6 * np.pi, 60)
    r = 0.12 + 0.85 * t / t[-1]
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _gear() -> np.ndarray:
    n = 10
    t = np.linspace(0.0, 2.0 * np.pi, 4 * n, endpoint=False)
    r = np.where((np.arange(4 * n) // 2) % 2 == 0, 1.0, 0.72)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _teardrop() -> np.ndarray:
    return np.concatenate([_arc(0.62, -np.pi / 6, 7 * np.pi / 6, cy=0.3), [[0.0, -1.0]]], axis=0)


_BAR = 0.26  # half-width of the bars of glyph-like shapes

_SHAPES: dict[str, list[Op]] = {
    "circle": [Op(_circle(0.9))],
    "triangle": [Op(_regular(3, 1.0))],
    "square": [Op(_rect(-0.72, -0.72, 0.72, 0.72))],
    "pentagon": [Op(_regular(5, 0.95))],
    "hexagon": [Op(_regular(6, 0.95, 0.0))],
    "star": [Op(_star(5, 1.0, 0.42))],
    "cross": [Op(_rect(-1.0, -_BAR, 1.0, _BAR)), Op(_rect(-_BAR, -1.0, _BAR, 1.0))],
    "ring": [Op(_circle(0.95)), Op(_circle(0.55), fill=False)],
    "arrow": [
        Op(_poly((-1, -0.22), (0.15, -0.22), (0.15, -0.6), (1, 0), (0.15, 0.6), (0.15, 0.22), (-1, 0.22)))
    ],
    "heart": [Op(_heart())],
    "crescent": [Op(_circle(0.95)), Op(_circle(0.78, 0.45, -0.2), fill=False)],
    "spiral": [Op(_spiral(), width=0.2)],
    "letter_L": [
        Op(_rect(-0.65, -0.95, -0.65 + 2 * _BAR, 0.95)),
        Op(_rect(-0.65, 0.95 - 2 * _BAR, 0.7, 0.95)),
    ],
    "letter_T": [Op(_rect(-0.85, -0.95, 0.85, -0.95 + 2 * _BAR)), Op(_rect(-_BAR, -0.95, _BAR, 0.95))],
    "letter_H": [
        Op(_rect(-0.8, -0.95, -0.8 + 2 * _BAR, 0.95)),
        Op(_rect(0.8 - 2 * _BAR, -0.95, 0.8, 0.95)),
        Op(_rect(-0.8, -_BAR, 0.8, _BAR)),
    ],
    "ellipse": [Op(_circle(1.0) * [1.0, 0.45])],
    "frame": [Op(_rect(-0.8, -0.8, 0.8, 0.8)), Op(_rect(-0.45, -0.45, 0.45, 0.45), fill=False)],
    "hourglass": [Op(_poly((-0.75, -0.95), (0.75, -0.95), (0, 0), (0.75, 0.95), (-0.75, 0.95), (0, 0)))],
    "flower": [
        *(Op(_circle(0.36, 0.55 * np.cos(a), 0.55 * np.sin(a))) for a in np.arange(5) * 2 * np.pi / 5)
    ],
    "lightning": [
        Op(_poly((0.2, -1), (0.55, -1), (0.15, -0.15), (0.5, -0.15), (-0.35, 1), (-0.05, 0.1), (-0.4, 0.1)))
    ],
    # Held-out shapes: never a class, only the out-of-distribution images of ImageNet-O.
    "gear": [Op(_gear()), Op(_circle(0.3), fill=False)],
    "teardrop": [Op(_teardrop())],
    "semicircle": [Op(_arc(0.95, np.pi, 2 * np.pi, cy=0.35))],
    "letter_Z": [Op(_poly((-0.75, -0.8), (0.75, -0.8), (-0.75, 0.8), (0.75, 0.8)), width=0.4)],
    "three_dots": [
        Op(_circle(0.33, 0.6 * np.cos(a), 0.6 * np.sin(a))) for a in -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    ],
}

CLASS_SHAPES: tuple[str, ...] = tuple(list(_SHAPES)[:20])
"""The 20 in-distribution shapes; class ``i`` is ``CLASS_SHAPES[i]``."""
OOD_SHAPES: tuple[str, ...] = tuple(list(_SHAPES)[20:])
"""Held-out shapes used only for the out-of-distribution set."""


def shape_mask(
    name: str,
    size: int,
    center: tuple[float, float],
    radius: float,
    angle: float = 0.0,
    stretch: float = 1.0,
) -> np.ndarray:
    """Rasterise shape ``name`` into a soft mask.

    Args:
        name: a key of ``CLASS_SHAPES`` or ``OOD_SHAPES``.
        size: side of the square image in pixels.
        center: (x, y) of the shape centre in pixels.
        radius: pixels per unit of shape coordinates (the shape's outer radius).
        angle: rotation in degrees, counter-clockwise.
        stretch: horizontal scale factor applied before the rotation (1 keeps proportions).

    Returns:
        float32 array [size, size] with values in [0, 1].
    """
    if name not in _SHAPES:
        raise KeyError(f"unknown shape {name!r}; choose one of {sorted(_SHAPES)}")
    theta = np.deg2rad(angle)
    rot = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    s = _SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    for op in _SHAPES[name]:
        pts = (op.points * [stretch, 1.0]) @ rot.T * radius
        pts = (pts + center) * s
        xy = [tuple(p) for p in pts.tolist()]
        value = 255 if op.fill else 0
        if op.width > 0:
            draw.line(xy, fill=value, width=max(1, round(op.width * radius * s)), joint="curve")
        else:
            draw.polygon(xy, fill=value)
    mask = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255.0


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Band of about ``width`` pixels along the boundary of a soft mask.

    Args:
        mask: float array [H, W] in [0, 1].
        width: line width in pixels (>= 1).

    Returns:
        float32 array [H, W] in [0, 1], 1 on the outline.
    """
    img = Image.fromarray(np.round(mask * 255).astype(np.uint8))
    grown = np.asarray(img.filter(ImageFilter.MaxFilter(2 * ((width + 1) // 2) + 1)), dtype=np.float32)
    shrunk = np.asarray(img.filter(ImageFilter.MinFilter(2 * (width // 2) + 1)), dtype=np.float32)
    return np.clip((grown - shrunk) / 255.0, 0.0, 1.0)

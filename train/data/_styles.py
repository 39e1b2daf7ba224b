"""Surface appearance for the embedded benchmark: textures, palettes and backgrounds.

Everything returns float32 arrays in [0, 1]: texture maps are [H, W], colours are [3] (RGB),
images are [H, W, 3]. All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

TEXTURES: tuple[str, ...] = (
    "solid",
    "stripes",
    "checker",
    "dots",
    "waves",
    "blobs",
    "grid",
    "rings",
    "speckle",
    "gradient",
)
N_HUES = 10
"""Hue ``k`` is centred at ``k / N_HUES`` on the HSV hue circle."""


def _coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by a random angle about a random origin: (u, v), each [size, size]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    ox, oy = rng.uniform(0, size, 2)
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    return c * (xx - ox) + s * (yy - oy), -s * (xx - ox) + c * (yy - oy)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bicubic-upsampled uniform noise of ``cells`` x ``cells`` knots: [size, size] in [0, 1]."""
    knots = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    noise = np.asarray(knots.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    return np.clip(noise, 0.0, 1.0)


def texture(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    """A texture map of type ``kind`` (one of ``TEXTURES``): float32 [size, size] in [0, 1]."""
    u, v = _coords(rng, size)
    period = rng.uniform(5.0, 8.0) * size / 64
    w = 2.0 * np.pi / period
    if kind == "solid":
        t = np.zeros((size, size), np.float32)
    elif kind == "stripes":
        t = np.sin(w * u) > 0
    elif kind == "checker":
        t = np.sin(w * u) * np.sin(w * v) > 0
    elif kind == "dots":
        t = np.hypot((u % period) - period / 2, (v % period) - period / 2) < period * 0.3
    elif kind == "waves":
        t = np.sin(w * u + 2.0 * np.sin(w * v / 2.5)) > 0
    elif kind == "blobs":
        t = smooth_noise(rng, size, max(3, size // 10)) > 0.5
    elif kind == "grid":
        t = np.minimum(u % period, v % period) < 1.3 * size / 64
    elif kind == "rings":
        t = np.sin(w * np.hypot(u, v)) > 0
    elif kind == "speckle":
        t = rng.random((size, size)) < 0.35
    elif kind == "gradient":
        t = (u - u.min()) / max(float(np.ptp(u)), 1e-6)
    else:
        raise KeyError(f"unknown texture {kind!r}; choose one of {TEXTURES}")
    return np.asarray(t, dtype=np.float32)


def hsv(h: float, s: float, v: float) -> np.ndarray:
    """RGB colour [3] in [0, 1] from HSV (hue wraps around, s and v are clipped to [0, 1])."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def object_palette(
    rng: np.random.Generator,
    hue: float,
    jitter: float = 0.03,
    value_shift: float = 0.0,
    backdrop: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of the same hue for a textured object: a saturated base and a darker or paler shade.

    Args:
        hue: hue index in [0, N_HUES) (fractional values allowed).
        jitter: standard deviation of the hue noise, in fractions of the hue circle.
        value_shift: added to the HSV value of both colours (a global brightness shift).
        backdrop: HSV value of the background, if the base colour should keep >= 0.25 away from it.
    """
    h = hue / N_HUES + rng.normal(0.0, jitter)
    s, v = rng.uniform(0.6, 1.0), _value(rng, backdrop) + value_shift
    base = hsv(h, s, v)
    if rng.random() < 0.5:
        shade = hsv(h, s, v * rng.uniform(0.2, 0.45))
    else:
        shade = hsv(h, s * rng.uniform(0.15, 0.4), min(1.0, v + 0.25))
    return base, shade


def _value(rng: np.random.Generator, backdrop: float | None, lo: float = 0.4, gap: float = 0.25) -> float:
    """Uniform in [lo, 1] outside (backdrop - gap, backdrop + gap); the gap is narrower than [lo, 1]."""
    if backdrop is None:
        return float(rng.uniform(lo + 0.15, 1.0))
    below = max(0.0, min(1.0, backdrop - gap) - lo)
    above_start = max(lo, backdrop + gap)
    u = rng.uniform(0.0, below + max(0.0, 1.0 - above_start))
    return lo + u if u < below else above_start + u - below


def fill(t: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Blend colours ``a`` (where t=0) and ``b`` (where t=1): [H, W] map -> [H, W, 3] image."""
    return a + t[..., None] * (b - a)


def background(rng: np.random.Generator, size: int, value_shift: float = 0.0) -> np.ndarray:
    """A low-contrast, mostly desaturated background (flat, gradient, blobs or stripes): [size, size, 3]."""
    h, s, v = rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.15, 0.95) + value_shift
    a = hsv(h, s, v)
    b = hsv(h + rng.normal(0.0, 0.05), s, v + rng.choice([-1, 1]) * rng.uniform(0.1, 0.3))
    kind = rng.choice(["solid", "gradient", "blobs", "stripes"])
    t = smooth_noise(rng, size, 4) if kind == "blobs" else texture(rng, str(kind), size)
    return fill(t * rng.uniform(0.4, 1.0), a, b)


def composite(image: np.ndarray, layer: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Alpha-composite ``layer`` ([H, W, 3] or colour [3]) over ``image`` [H, W, 3] with ``mask`` [H, W]."""
    return image + mask[..., None] * (layer - image)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float image [H, W, 3] in [0, 1] -> uint8 [H, W, 3]."""
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)

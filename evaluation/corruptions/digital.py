"""Digital corruptions: contrast, elastic transform, pixelate, JPEG compression and saturate.

All take float [B, 3, H, W] in [0, 1] and return the same. Elastic and pixelate are defined
relative to the image size; the others have no size-dependent parameter.
"""

from __future__ import annotations

import math

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ._ops import adjust_hsv, gaussian_filter, rand
from .jpeg import jpeg_round_trip

CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
# (alpha, sigma, affine jitter) in units of 244 px for a 224 px image (ImageNet-C's constants;
# its comment says 244 was meant to be 224, and the output it published used 244).
ELASTIC = ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)
JPEG_QUALITY = (25, 18, 15, 10, 7)
SATURATE = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))  # factor, shift of HSV saturation


def contrast(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Pull every channel towards its image mean by the factor 0.4 .. 0.05."""
    factor = CONTRAST[severity - 1]
    mean = x.mean((2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp_(0, 1)


def saturate(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """HSV saturation ``s * factor + shift``: desaturates at severities 1-2, oversaturates at 3-5."""
    factor, shift = SATURATE[severity - 1]
    return adjust_hsv(x, 1, factor, shift)


def jpeg_compression(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Baseline JPEG round trip at quality 25 .. 7."""
    return jpeg_round_trip(x, JPEG_QUALITY[severity - 1])


def _box_bins(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's BOX footprints for resampling ``n`` samples to ``size``: [start, end) per output.

    Output i averages the inputs j with ``-0.5 < (j - centre + 0.5) / r <= 0.5``, ``centre =
    (i + 0.5) r``, ``r = n / size``, searched from ``int(centre - r / 2 + 0.5)``; the float64
    operations are PIL's own, in its order, so that ties fall the same way.
    """
    ratio = n / size
    support = 0.5 * ratio
    centre = (np.arange(size) + 0.5) * ratio
    first = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    candidates = first[:, None] + np.arange(2 * math.ceil(support) + 2)
    position = (candidates - centre[:, None] + 0.5) * (1.0 / ratio)
    inside = (position > -0.5) & (position <= 0.5) & (candidates < n)
    start = np.where(inside, candidates, n).min(1)
    return start, np.where(inside, candidates + 1, 0).max(1)


def _box_rows(x: Tensor, size: int) -> Tensor:
    """PIL's BOX downsampling of the rows of [..., n, W] to ``size`` rows."""
    start, end = (torch.as_tensor(v, device=x.device) for v in _box_bins(x.shape[-2], size))
    sums = F.pad(x.cumsum(-2), (0, 0, 1, 0))
    return (sums.index_select(-2, end) - sums.index_select(-2, start)) / (end - start).to(x.dtype)[:, None]


def _nearest(size: int, source: int) -> np.ndarray:
    """PIL's NEAREST source index of each of ``size`` outputs: it steps ``source / size`` from
    half a step, summing in float64 as it goes, and truncates."""
    step = source / size
    return np.cumsum(np.r_[0.5 * step, np.full(size - 1, step)]).astype(np.int64)


def _upsample_nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    """PIL's NEAREST upsampling of [B, C, h, w] to ``size``; through ``F.interpolate`` (fast) when
    its float32 index rule gives PIL's indices (most sizes; ties can round apart)."""
    rows, cols = _nearest(size[0], x.shape[-2]), _nearest(size[1], x.shape[-1])
    torch_rows, torch_cols = (
        np.floor((np.arange(n, dtype=np.float32) + 0.5) * np.float32(m / n)).astype(np.int64)
        for n, m in ((size[0], x.shape[-2]), (size[1], x.shape[-1]))
    )
    if np.array_equal(rows, torch_rows) and np.array_equal(cols, torch_cols):
        return F.interpolate(x, size=size, mode="nearest-exact")
    rows, cols = (torch.as_tensor(v, device=x.device) for v in (rows, cols))
    return x.index_select(-2, rows).index_select(-1, cols)


def pixelate(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Box-downsample to 0.6 .. 0.25 of the size and upsample back with nearest neighbours (PIL)."""
    factor = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    small_h, small_w = max(1, int(h * factor)), max(1, int(w * factor))
    small = _box_rows(_box_rows(x, small_h).transpose(-1, -2), small_w).transpose(-1, -2)
    return _upsample_nearest(small, (h, w))


def elastic_transform(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """ImageNet-C's elastic transform: a random affine warp, then a smooth random displacement field.

    The affine moves three points at +-1/3 of the size around the centre by up to ``jitter``
    (reflect-101 border); the field is uniform noise in [-1, 1) smoothed by a Gaussian of
    ``sigma`` (truncated at 3 sigma) times ``alpha`` px, sampled bilinearly with a mirrored
    border. The constants are fractions of the image size (of its shorter side), as published
    for 224 px, so ``scale`` is not used.
    """
    b, _, h, w = x.shape
    unit = 244 * min(h, w) / 224
    alpha, sigma, jitter = (c * unit for c in ELASTIC[severity - 1])
    cx, cy, half = w // 2, h // 2, min(h, w) // 3
    source = torch.tensor(
        [[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]],
        device=x.device,
        dtype=x.dtype,
    )
    target = source + jitter * (2 * rand((b, 3, 2), x, generator) - 1)
    homogeneous = F.pad(source, (0, 1), value=1.0)
    affine = torch.linalg.solve(homogeneous.expand(b, 3, 3), target).transpose(1, 2)
    warped = kornia.geometry.transform.warp_affine(
        x, affine, (h, w), padding_mode="reflection", align_corners=True
    )
    noise = 2 * rand((b, 2, h, w), x, generator) - 1
    dx, dy = (alpha * gaussian_filter(noise, sigma, "symmetric", truncate=3.0)).unbind(1)
    grid_x = (2 * (torch.arange(w, device=x.device) + dx) + 1) / w - 1
    grid_y = (2 * (torch.arange(h, device=x.device)[:, None] + dy) + 1) / h - 1
    grid = torch.stack([grid_x, grid_y], -1)
    return F.grid_sample(
        warped, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    ).clamp_(0, 1)

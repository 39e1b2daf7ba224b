"""Digital corruptions: contrast, elastic transform, JPEG compression and saturate (pixelate:
``pixelate.py``).

All take float [B, 3, H, W] in [0, 1] and return the same. Elastic is defined relative to the
image size; the others have no size-dependent parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ops import adjust_hsv, gaussian_filter, rand
from .jpeg import jpeg_round_trip

CONTRAST = (0.4, 0.3, 0.2, 0.1, 0.05)
# (alpha, sigma, affine jitter) in units of 244 px for a 224 px image (ImageNet-C's constants;
# its comment says 244 was meant to be 224, and the output it published used 244).
ELASTIC = ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02))
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


def affine_grid(theta: Tensor, h: int, w: int) -> Tensor:
    """``F.affine_grid(theta, [B, C, h, w], align_corners=True)`` as broadcast sums: [B, h, w, 2].

    theta [B, 2, 3] maps output pixel centres (x, y, 1) in [-1, 1] to sampling points. On the
    CPU, affine_grid's batched product with an inner size of 3 costs more than the bilinear
    sampling it feeds (0.45 against 0.40 ms per 224 px image, one thread).
    """
    xs = torch.linspace(-1, 1, w, device=theta.device, dtype=theta.dtype)
    ys = torch.linspace(-1, 1, h, device=theta.device, dtype=theta.dtype)[:, None]
    t = theta[:, :, :, None, None]  # [B, 2, 3, 1, 1]
    grid = torch.empty(theta.shape[0], h, w, 2, device=theta.device, dtype=theta.dtype)
    for axis in (0, 1):
        torch.add(t[:, axis, 2] + t[:, axis, 1] * ys, t[:, axis, 0] * xs, out=grid[..., axis])
    return grid


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
    # The affine taking each target point back to its source point, in grid_sample's [-1, 1]
    # units (pixel centres, align_corners=True; its "reflection" is OpenCV's reflect-101).
    to_source = torch.linalg.solve(
        F.pad(target, (0, 1), value=1.0), F.pad(source, (0, 1), value=1.0).expand(b, 3, 3)
    )
    to_unit = torch.tensor(
        [[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]], dtype=x.dtype, device=x.device
    )
    theta = (to_unit @ to_source.transpose(1, 2) @ torch.linalg.inv(to_unit))[:, :2]
    grid = affine_grid(theta, h, w)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    noise = rand((b, 2, h, w), x, generator).mul_(2).sub_(1)
    field = gaussian_filter(noise, sigma, "symmetric", truncate=3.0)  # alpha * field: displacement in px
    # pixel centre c + displacement d in grid_sample's units (align_corners=False): (2 (c + d) + 1) / size - 1
    for axis, size in ((0, w), (1, h)):
        centres = (2 * torch.arange(size, device=x.device, dtype=x.dtype) + 1) / size - 1
        torch.add(
            centres if axis == 0 else centres[:, None],
            field[:, axis],
            alpha=2 * alpha / size,
            out=grid[..., axis],
        )
    return F.grid_sample(
        warped, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    ).clamp_(0, 1)

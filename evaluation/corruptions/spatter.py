"""Spatter: water drops (severities 1-3) or mud (4-5) splashed on the lens.

Takes float [B, 3, H, W] in [0, 1] and returns the same. The reference renders water with
OpenCV (Canny edges, distance transform, histogram equalisation, emboss); each step has a
batched tensor counterpart here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._ops import gaussian_filter, pad, randn

# mean, std, blob sigma, threshold, strength (water) or mud sigma, 1 for mud
SPATTER = (
    (0.65, 0.3, 4, 0.69, 0.6, 0),
    (0.65, 0.3, 3, 0.68, 0.6, 0),
    (0.65, 0.3, 2, 0.68, 0.5, 0),
    (0.65, 0.3, 1, 0.65, 1.5, 1),
    (0.67, 0.4, 1, 0.65, 1.5, 1),
)
WATER = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD = (63 / 255, 42 / 255, 20 / 255)
EMBOSS = ((-2.0, -1.0, 0.0), (-1.0, 1.0, 1.0), (0.0, 1.0, 2.0))
BOX = ((1 / 9,) * 3,) * 3
MAX_DISTANCE = 20


def _filter3x3(x: Tensor, kernel: tuple[tuple[float, ...], ...]) -> Tensor:
    """3x3 correlation of [B, 1, H, W] with OpenCV's default reflect-101 border, as shifted sums."""
    h, w = x.shape[-2:]
    padded = pad(x, 1, 1, 1, 1, "reflect")
    out = torch.zeros_like(x)
    for dy, row in enumerate(kernel):
        for dx, weight in enumerate(row):
            if weight:
                out.add_(padded[..., dy : dy + h, dx : dx + w], alpha=weight)
    return out


def _edges(blobs: Tensor) -> Tensor:
    """Boundary pixels of the blobs [B, 1, H, W] (bool): inside, with a 4-neighbour outside.

    Stands in for ``Canny(layer, 50, 150)``: the thresholded layer jumps from 0 to > 160 at a
    blob's rim, far above both thresholds, and varies too slowly inside to raise other edges.
    """
    inside = blobs.to(torch.uint8)
    padded = pad(inside, 1, 1, 1, 1, "replicate")
    neighbours = torch.stack(
        [padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]]
    )
    return blobs & (neighbours.amin(0) == 0)


def _distance_to_edges(edges: Tensor, limit: int) -> Tensor:
    """Euclidean distance [B, 1, H, W] from each pixel to the nearest edge pixel, capped at ``limit``.

    Exact and separable, in int16: the distance along each column to the nearest edge (capped
    at ``limit + 1``) by doubling, i.e. ``min(d, d shifted by +-s, plus s)`` for s = 1, 2, 4, ...,
    which reaches every offset below twice the last s at its exact cost; then the minimum over
    horizontal offsets within ``limit`` of ``dx^2 + column_distance^2``.
    """
    h, w = edges.shape[-2:]
    cap = limit + 1
    column = torch.where(edges, 0, cap).to(torch.int16)
    step = 1
    while step <= limit:
        padded = F.pad(column, (0, 0, step, step), value=cap)
        column = torch.minimum(column, torch.minimum(padded[..., :h, :], padded[..., 2 * step :, :]) + step)
        step *= 2
    column = column.clamp_(max=cap) ** 2
    padded = F.pad(column, (limit, limit), value=cap**2)
    best = column
    for dx in range(1, limit + 1):
        nearer = torch.minimum(padded[..., limit - dx : limit - dx + w], padded[..., limit + dx :][..., :w])
        best = torch.minimum(best, nearer.add_(dx * dx))
    return best.float().sqrt_().clamp_(max=limit)


def _equalize(levels: Tensor) -> Tensor:
    """OpenCV ``equalizeHist`` of integer levels [B, 1, H, W] in 0..255, per image."""
    b = levels.shape[0]
    flat = levels.reshape(b, -1).long()
    hist = torch.zeros(b, 256, device=levels.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float)
    )
    cdf = hist.cumsum(1)
    first = (hist > 0).float().argmax(1, keepdim=True)
    lowest = hist.gather(1, first)
    spread = flat.shape[1] - lowest
    lut = torch.round((cdf - lowest) * 255 / spread.clamp(min=1)).clamp(0, 255)
    lut = torch.where(torch.arange(256, device=levels.device) < first, 0, lut)
    lut = torch.where(spread == 0, torch.arange(256, device=levels.device).float(), lut)
    return lut.gather(1, flat).view_as(levels)


def water(x: Tensor, liquid: Tensor, strength: float) -> Tensor:
    """Add turquoise water drops given a thresholded liquid layer [B, 1, H, W] (0 where dry).

    The drops are shaded by the equalised, embossed distance to their rims (a lit 3-D look).
    """
    levels = torch.floor(liquid * 255).clamp(0, 255)
    distance = _distance_to_edges(_edges(levels > 0), MAX_DISTANCE)
    distance = torch.floor(_filter3x3(distance, BOX))
    shade = _filter3x3(_equalize(distance), EMBOSS).clamp(0, 255)
    shade = torch.round(_filter3x3(shade, BOX))
    mask = levels * shade.to(x.dtype)
    mask = strength * mask / mask.amax((1, 2, 3), keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    color = torch.tensor(WATER, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x + mask * color).clamp_(0, 1)


def liquid_layer(
    x: Tensor, mean: float, std: float, sigma: float, threshold: float, generator: torch.Generator | None
) -> Tensor:
    """Blurred normal noise [B, 1, H, W], zeroed below ``threshold``: where the liquid lies."""
    b, _, h, w = x.shape
    liquid = gaussian_filter(mean + std * randn((b, 1, h, w), x, generator), sigma)
    return torch.where(liquid < threshold, 0, liquid)


def spatter(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Water drops (severities 1-3) or mud (4-5); blob and mud sigmas are in pixels times ``scale``."""
    mean, std, sigma, threshold, strength, is_mud = SPATTER[severity - 1]
    liquid = liquid_layer(x, mean, std, sigma * scale, threshold, generator)
    if not is_mud:
        return water(x, liquid, strength)
    mud = gaussian_filter((liquid > threshold).to(x.dtype), strength * scale)
    mud = torch.where(mud < 0.8, 0, mud)
    color = torch.tensor(MUD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * (1 - mud) + color * mud).clamp_(0, 1)

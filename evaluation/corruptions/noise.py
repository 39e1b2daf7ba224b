"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise.

All take float [B, 3, H, W] in [0, 1] and return the same; noise is drawn per pixel and
channel, so no parameter depends on the image size.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ops import rand, randn

GAUSSIAN_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_PHOTONS = (60, 25, 12, 5, 3)
IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
SPECKLE_SIGMA = (0.15, 0.2, 0.35, 0.45, 0.6)


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """``x + N(0, sigma^2)``, sigma 0.08 .. 0.38."""
    sigma = GAUSSIAN_SIGMA[severity - 1]
    return (x + sigma * randn(x.shape, x, generator)).clamp_(0, 1)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """``Poisson(x * c) / c``, c = 60 .. 3 photons at full intensity."""
    photons = SHOT_PHOTONS[severity - 1]
    return (torch.poisson(x * photons, generator) / photons).clamp_(0, 1)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Salt and pepper: a share ``amount`` of the values becomes 0 or 1 with equal odds."""
    amount = IMPULSE_AMOUNT[severity - 1]
    u = rand(x.shape, x, generator)
    return torch.where(u < amount, (u >= amount / 2).to(x.dtype), x)


def speckle_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Multiplicative noise ``x + x * N(0, sigma^2)``, sigma 0.15 .. 0.6."""
    sigma = SPECKLE_SIGMA[severity - 1]
    return (x + x * sigma * randn(x.shape, x, generator)).clamp_(0, 1)

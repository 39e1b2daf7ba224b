"""Noise corruptions: gaussian, shot (Poisson), impulse (salt and pepper) and speckle noise.

All take float [B, 3, H, W] in [0, 1] and return the same; noise is drawn per pixel and
channel, so no parameter depends on the image size.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from ._ops import rand, randn

GAUSSIAN_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)
SHOT_PHOTONS = (60, 25, 12, 5, 3)
IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)
SPECKLE_SIGMA = (0.15, 0.2, 0.35, 0.45, 0.6)
EIGHT_BIT_TOLERANCE = 1e-3
"""How far (in 1/255 steps) a value may sit from k / 255 and still count as 8-bit level k."""
POISSON_TAIL_SIGMAS = 12
"""The alias tables stop this many standard deviations above the largest rate (tail mass < 1e-20)."""


def poisson_pmf(rates: np.ndarray, outcomes: int) -> np.ndarray:
    """Poisson probabilities of 0 .. ``outcomes - 1`` for each rate: float64 [R, outcomes], each
    row renormalised over the outcomes kept."""
    n = np.arange(outcomes)
    log_factorial = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, outcomes)))])
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = n * np.log(rates[:, None]) - rates[:, None] - log_factorial
    log_p[rates == 0] = np.where(n == 0, 0.0, -np.inf)
    p = np.exp(log_p)
    return p / p.sum(1, keepdims=True)


@functools.lru_cache(maxsize=16)
def _level_alias_tables(photons: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Vose's alias tables of Poisson(k * photons / 255) for the 8-bit levels k = 0 .. 255.

    Returns thresholds and aliases, float32 [256, K], K outcomes. A draw for level k takes
    ``t = u * K`` (u uniform), column ``j = floor(t)``, and is ``j`` if ``t < thresholds[k, j]``
    (j plus the share of column j that keeps j) and ``aliases[k, j]`` otherwise.
    """
    outcomes = math.ceil(photons + POISSON_TAIL_SIGMAS * math.sqrt(photons) + POISSON_TAIL_SIGMAS)
    pmf = poisson_pmf(np.arange(256) * photons / 255, outcomes)
    thresholds = np.tile(np.arange(1.0, outcomes + 1), (256, 1))
    aliases = np.tile(np.arange(outcomes, dtype=np.float64), (256, 1))
    for level, row in enumerate(pmf * outcomes):
        mass = row.tolist()
        small = [j for j, m in enumerate(mass) if m < 1]
        large = [j for j, m in enumerate(mass) if m >= 1]
        while small and large:
            j, donor = small.pop(), large.pop()
            thresholds[level, j], aliases[level, j] = j + mass[j], donor
            mass[donor] += mass[j] - 1
            (small if mass[donor] < 1 else large).append(donor)
    as_tensor = functools.partial(torch.tensor, dtype=torch.float32, device=device)
    return as_tensor(thresholds), as_tensor(aliases)


def poisson_counts(x: Tensor, photons: int, generator: torch.Generator | None) -> Tensor:
    """Poisson(x * photons) counts as floats, same shape as ``x`` (values in [0, 1]).

    8-bit images (every value k / 255, as decoded image files are) draw from alias tables of the
    256 levels: one uniform per value, a gather and a compare, ~6x faster than ``torch.poisson``'s
    scalar sampler on the CPU; the distribution is exact but for the tail past
    ``POISSON_TAIL_SIGMAS`` and the 2^-24 resolution of float32 uniforms. Other inputs go
    through ``torch.poisson``. The two paths consume the generator differently.
    """
    level = x * 255
    rounded = level.round()
    on_grid = x.numel() > 0 and level.sub_(rounded).abs_().max() <= EIGHT_BIT_TOLERANCE
    if on_grid:
        low, high = rounded.aminmax()
        on_grid = bool(low >= 0 and high <= 255)
    if not on_grid:
        return torch.poisson(x * photons, generator)
    thresholds, aliases = _level_alias_tables(photons, x.device)
    outcomes = thresholds.shape[1]
    t = rand(x.shape, x, generator).mul_(outcomes)
    column = t.floor().clamp_(max=outcomes - 1)  # u * K can round up to K
    index = rounded.mul_(outcomes).add_(column).flatten().int()
    keep = t.flatten() < thresholds.flatten().index_select(0, index)
    return torch.where(keep, column.flatten(), aliases.flatten().index_select(0, index)).view(x.shape)


def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """``x + N(0, sigma^2)``, sigma 0.08 .. 0.38."""
    sigma = GAUSSIAN_SIGMA[severity - 1]
    return (x + sigma * randn(x.shape, x, generator)).clamp_(0, 1)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """``Poisson(x * c) / c``, c = 60 .. 3 photons at full intensity."""
    photons = SHOT_PHOTONS[severity - 1]
    return poisson_counts(x, photons, generator).div_(photons).clamp_(max=1)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Salt and pepper: a share ``amount`` of the values becomes 0 or 1 with equal odds."""
    amount = IMPULSE_AMOUNT[severity - 1]
    u = rand(x.shape, x, generator)
    return torch.where(u < amount, (u >= amount / 2).to(x.dtype), x)


def speckle_noise(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Multiplicative noise ``x + x * N(0, sigma^2)``, sigma 0.15 .. 0.6."""
    sigma = SPECKLE_SIGMA[severity - 1]
    return (x + x * sigma * randn(x.shape, x, generator)).clamp_(0, 1)

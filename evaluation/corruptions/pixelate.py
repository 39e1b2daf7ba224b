"""Pixelate: PIL's BOX downsampling and NEAREST upsampling, as row gathers on tensors.

Takes float [B, 3, H, W] in [0, 1] and returns the same. PIL's sample footprints are computed
once per (size, target) with PIL's own float64 index math; each axis pass is then a few row
gathers (``index_select`` on the row axis copies whole rows) and multiply-adds, or a reshape
where the sizes divide. Columns are done as rows of the transposed image.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

PIXELATE = (0.6, 0.5, 0.4, 0.3, 0.25)


def box_bins(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
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


def nearest_sources(size: int, source: int) -> np.ndarray:
    """PIL's NEAREST source index of each of ``size`` outputs: it steps ``source / size`` from
    half a step, summing in float64 as it goes, and truncates."""
    step = source / size
    return np.cumsum(np.r_[0.5 * step, np.full(size - 1, step)]).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _box_taps(n: int, size: int) -> tuple[Tensor, Tensor] | None:
    """BOX downsampling of ``n`` rows to ``size`` as taps: source rows [K, size] and weights
    [K, size, 1] (1 / footprint, 0 past its end); None when every footprint is ``n // size``
    consecutive rows (a reshape)."""
    start, end = box_bins(n, size)
    if n % size == 0 and np.array_equal(start, np.arange(size) * (n // size)):
        return None
    offsets = np.arange(int((end - start).max()))
    rows = np.minimum(start + offsets[:, None], n - 1)
    weights = (start + offsets[:, None] < end) / (end - start)
    return torch.as_tensor(rows), torch.as_tensor(weights, dtype=torch.float32)[..., None]


@functools.lru_cache(maxsize=64)
def _nearest_rows(size: int, source: int) -> Tensor | None:
    """NEAREST upsampling of ``source`` rows to ``size`` as source rows [size]; None when each row
    is repeated ``size // source`` times in order (an expand)."""
    rows = nearest_sources(size, source)
    if size % source == 0 and np.array_equal(rows, np.arange(size) // (size // source)):
        return None
    return torch.as_tensor(rows)


def _box_down_rows(x: Tensor, size: int) -> Tensor:
    """PIL's BOX downsampling of the rows of [..., n, W] to ``size`` rows."""
    n = x.shape[-2]
    taps = _box_taps(n, size)
    if taps is None:
        return x.unflatten(-2, (size, n // size)).mean(-2)
    rows, weights = taps[0].to(x.device), taps[1].to(x)
    out = x.index_select(-2, rows[0]).mul_(weights[0])
    for k in range(1, len(rows)):
        out.addcmul_(x.index_select(-2, rows[k]), weights[k])
    return out


def _nearest_up_rows(x: Tensor, size: int) -> Tensor:
    """PIL's NEAREST upsampling of the rows of [..., s, W] to ``size`` rows."""
    *lead, s, w = x.shape
    rows = _nearest_rows(size, s)
    if rows is None:
        return x.unsqueeze(-2).expand(*lead, s, size // s, w).reshape(*lead, size, w)
    return x.index_select(-2, rows.to(x.device))


def pixelate(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Box-downsample to 0.6 .. 0.25 of the size and upsample back with nearest neighbours (PIL)."""
    factor = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    small_h, small_w = max(1, int(h * factor)), max(1, int(w * factor))
    small_t = _box_down_rows(_box_down_rows(x, small_h).transpose(-1, -2).contiguous(), small_w)
    return _nearest_up_rows(_nearest_up_rows(small_t, w).transpose(-1, -2), h)  # gathers transpose too

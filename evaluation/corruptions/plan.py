"""Which validation images are scored under which ImageNet-C corruption, fixed by a seed.

Per epoch, every image is scored once, under its own (corruption, severity) pair; pairs are
dealt out evenly, so each of the 15 x 5 pairs covers about N / 75 images and the per-pair error
rates (and from them the mCE) are unbiased estimates of the full grid's at 1/75 of its cost.
At the end of training the full grid is scored on a fixed subset.
"""

from __future__ import annotations

import torch
from torch import Tensor

COMMON_COUNT = 15
SEVERITY_COUNT = 5


def c_plan(num_images: int, seed: int) -> tuple[Tensor, Tensor]:
    """Stratified (corruption, severity) assignment for ``num_images`` images.

    Returns:
        corruption index [N] (int64, into the 15 scored corruptions in ImageNet-C order) and
        severity [N] (int64, 1..5). Each of the 75 pairs gets ``N // 75`` or ``N // 75 + 1``
        images; which pairs get the extra ones, and which images get which pair, depend only
        on ``seed``.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    generator = torch.Generator().manual_seed(seed)
    pairs = COMMON_COUNT * SEVERITY_COUNT
    order = torch.randperm(pairs, generator=generator)
    dealt = order[torch.arange(num_images) % pairs][torch.randperm(num_images, generator=generator)]
    return dealt // SEVERITY_COUNT, dealt % SEVERITY_COUNT + 1


def c_subset(num_images: int, size: int, seed: int) -> Tensor:
    """Sorted indices [min(size, N)] (int64) of a random subset of the images, fixed by ``seed``,
    for scoring the full 15 x 5 grid."""
    if num_images < 0 or size < 0:
        raise ValueError(f"num_images and size must be >= 0, got {num_images} and {size}")
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_images, generator=generator)[:size].sort().values

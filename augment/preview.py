"""A PNG grid to look at the augmentations: one row per image, a column per augmentation after the clean one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from augment.deepaugment import DeepAugment
from augment.images import list_images, load_images
from augment.noise2net import Noise2Net

CLEAN = "clean"


def reference_columns(
    edsr_weights: str,
    cae_weights: str,
    seed: int = 0,
    edsr_size: int | None = None,
    cae_size: int | None = None,
) -> dict[str, nn.Module]:
    """EDSR, CAE and Noise2Net, each on every image, one network per image (``edsr_size`` and
    ``cae_size`` as in :class:`DeepAugment`, everything else at the reference's defaults)."""
    common = {"images_per_network": 1, "seed": seed, "edsr_size": edsr_size, "cae_size": cae_size}
    return {
        "EDSR": DeepAugment(edsr_weights, cae_weights, p_edsr=1.0, p_cae=0.0, **common),
        "CAE": DeepAugment(edsr_weights, cae_weights, p_edsr=0.0, p_cae=1.0, **common),
        "Noise2Net": Noise2Net(p=1.0, seed=seed),
    }


def preview_grid(images: torch.Tensor, columns: Mapping[str, nn.Module]) -> torch.Tensor:
    """images [n, 3, S, S] in [0, 1] -> [n, 1 + len(columns), 3, S, S]: the clean images, then each
    column's augmentation of them (the augmentations run without autograd)."""
    return torch.stack([images, *(augment(images) for augment in columns.values())], dim=1)


def save_grid(grid: torch.Tensor, names: Sequence[str], path: Path, cell: int = 128) -> None:
    """Write [n, k, 3, S, S] in [0, 1] as a PNG of n rows and k columns headed by ``names``, cells scaled to
    ``cell`` px."""
    n, k = grid.shape[:2]
    if len(names) != k:
        raise ValueError(f"save_grid: {k} columns need {k} names, got {list(names)}")
    cells = F.interpolate(grid.flatten(0, 1), size=(cell, cell), mode="nearest")
    array = (cells.clamp(0, 1) * 255).round().to(torch.uint8).view(n, k, 3, cell, cell)
    array = array.permute(0, 3, 1, 4, 2).reshape(n * cell, k * cell, 3).numpy()
    header = 16
    canvas = Image.new("RGB", (k * cell, n * cell + header), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(array)), (0, header))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(names):
        draw.text((j * cell + 4, 2), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def check_options(out: Path, n: int = 8, image_size: int = 64, cell: int = 128) -> None:
    """Raise a one-line ValueError for arguments of :func:`preview` that cannot make a grid."""
    if n < 1 or cell < 1 or image_size < 1:
        raise ValueError(f"need n, cell and image_size >= 1, got n={n} cell={cell} image_size={image_size}")
    if Path(out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"out={out} needs an image suffix: .png (or .jpg)")


def preview(
    data_root: Path | str,
    out: Path | str,
    edsr_weights: str,
    cae_weights: str,
    split: str = "train",
    n: int = 8,
    image_size: int = 64,
    cell: int = 128,
    seed: int = 0,
    edsr_size: int | None = None,
    cae_size: int | None = None,
) -> Path:
    """Write the clean | EDSR | CAE | Noise2Net grid for ``n`` images spread over the classes of
    ``data_root/split`` to ``out``; returns ``out``."""
    out = Path(out).expanduser()
    check_options(out, n, image_size, cell)
    files = list_images(Path(data_root).expanduser() / split)
    step = max(1, len(files) // n)
    images = load_images(files[::step][:n], image_size).float() / 255
    columns = reference_columns(edsr_weights, cae_weights, seed, edsr_size, cae_size)
    save_grid(preview_grid(images, columns), [CLEAN, *columns], out, cell)
    return out

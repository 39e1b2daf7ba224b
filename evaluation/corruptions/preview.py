"""Sample photos and a preview grid of every corruption at every severity."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from . import CORRUPTION_NAMES, SEVERITIES, corrupt

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
"""scikit-image's bundled colour photos (no download needed)."""
LABEL_WIDTH = 150


def _square(image: Image.Image, size: int) -> Tensor:
    """Centre-crop a PIL image to a square, resize it (bicubic) and return float [3, size, size] in [0, 1]."""
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


def load_image(path: str, size: int) -> Tensor:
    """An image file as float [3, size, size] in [0, 1] (centre square, resized)."""
    with Image.open(path) as image:
        return _square(image, size)


def sample_photos(size: int, names: tuple[str, ...] = PHOTOS) -> Tensor:
    """scikit-image sample photos as float [N, 3, size, size] in [0, 1] (centre squares, resized)."""
    try:
        import skimage.data
    except ImportError as error:
        raise ModuleNotFoundError("sample photos need scikit-image: pip install scikit-image") from error
    return torch.stack([_square(Image.fromarray(getattr(skimage.data, name)()), size) for name in names])


def to_uint8(image: Tensor) -> np.ndarray:
    """float [3, H, W] in [0, 1] -> uint8 [H, W, 3]."""
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def _reference_row(image: np.ndarray, name: str) -> list[np.ndarray]:
    from imagecorruptions import corrupt as reference

    return [reference(image, severity=s, corruption_name=name) for s in SEVERITIES]


def preview_grid(image: Tensor, seed: int = 0, reference: bool = False) -> Image.Image:
    """A PNG-ready grid: one row per corruption (clean image, then severities 1..5).

    Args:
        image: float [3, H, W] in [0, 1].
        seed: seed of the corruptions' generator.
        reference: also render each corruption with the ``imagecorruptions`` package, in the
            row below ours, to compare them by eye.
    """
    generator = torch.Generator(device=image.device).manual_seed(seed)
    clean = to_uint8(image)
    rows: list[tuple[str, list[np.ndarray]]] = []
    for name in CORRUPTION_NAMES:
        ours = [to_uint8(corrupt(image[None], name, s, generator)[0]) for s in SEVERITIES]
        rows.append((name, [clean, *ours]))
        if reference:
            rows.append((f"{name} (reference)", [clean, *_reference_row(clean, name)]))
    h, w = clean.shape[:2]
    header = 20
    grid = Image.new("RGB", (LABEL_WIDTH + 6 * w, header + len(rows) * h), "white")
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(["clean", *(f"severity {s}" for s in SEVERITIES)]):
        draw.text((LABEL_WIDTH + column * w + 4, 4), title, fill="black")
    for row, (label, tiles) in enumerate(rows):
        top = header + row * h
        draw.text((4, top + h // 2 - 6), label, fill="black")
        for column, tile in enumerate(tiles):
            grid.paste(Image.fromarray(tile), (LABEL_WIDTH + column * w, top))
    return grid

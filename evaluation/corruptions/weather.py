"""Weather corruptions: snow, frost, fog and brightness.

All take float [B, 3, H, W] in [0, 1] and return the same. Frost needs the frost photos that
the ``imagecorruptions-imaug`` package ships (read from its folder, the package is not imported).
"""

from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ._ops import (
    adjust_hsv,
    correlate,
    luminance,
    motion_kernel,
    plasma_fractal,
    rand,
    randn,
    resample_kernel,
)

# mean, std, zoom of the flake noise, threshold, motion radius, motion sigma, image weight
SNOW = (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
)
FROST = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image weight, frost weight
# ImageNet-C draws from these five (imagecorruptions also ships and draws frost6.jpg)
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FOG = ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4))  # fog amount, fractal decay
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)


def brightness(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """HSV value + 0.1 .. 0.5."""
    return adjust_hsv(x, 2, 1.0, BRIGHTNESS[severity - 1])


def snow_blend(x: Tensor, flakes: Tensor, image_weight: float) -> Tensor:
    """Whiten the scene towards ``1.5 * luma + 0.5`` and add the flake layer [B, 1, H, W] and
    its 180-degree rotation."""
    x = image_weight * x + (1 - image_weight) * torch.maximum(x, luminance(x) * 1.5 + 0.5)
    return (x + flakes + flakes.flip(-2, -1)).clamp_(0, 1)


def snow(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Bright flakes: thresholded, zoomed normal noise streaked by motion blur at [-135, -45) degrees."""
    mean, std, zoom, threshold, radius, sigma, image_weight = SNOW[severity - 1]
    b, _, h, w = x.shape
    zoom *= scale
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    flakes = mean + std * randn((b, 1, ch, cw), x, generator)
    flakes = F.interpolate(
        flakes, size=(round(ch * zoom), round(cw * zoom)), mode="bilinear", align_corners=True
    )
    flakes = torch.where(flakes < threshold, 0, flakes).clamp_(0, 1)
    angle = 90 * rand((b,), x, generator) - 135
    fh, fw = flakes.shape[-2:]
    kernel = resample_kernel(motion_kernel(radius, sigma, angle, round(fh / scale), round(fw / scale)), scale)
    flakes = torch.round(correlate(flakes, kernel, "replicate") * 255) / 255
    return snow_blend(x, flakes[..., :h, :w], image_weight)


@functools.lru_cache(maxsize=1)
def _frost_photos() -> tuple[Tensor, ...]:
    """The frost photos as uint8 [3, h, w] tensors."""
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "frost needs the frost photos shipped by imagecorruptions-imaug: pip install imagecorruptions-imaug"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    photos = []
    for name in FROST_FILES:
        with Image.open(folder / name) as photo:
            photos.append(torch.from_numpy(np.asarray(photo.convert("RGB")).copy()).permute(2, 0, 1))
    return tuple(photos)


@functools.lru_cache(maxsize=8)
def _frost_textures(
    height: int, width: int, scale: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Frost photos resized for H x W images, stacked [5, 3, h_max, w_max] in [0, 1], and their sizes [5, 2].

    A photo is resized by ``scale``; if that does not cover the image it is enlarged to cover
    it with 10% to spare (as the reference does), bicubic, rounded to 8 bits.
    """
    textures, sizes = [], []
    for photo in _frost_photos():
        ph, pw = photo.shape[-2:]
        factor = scale if ph * scale >= height and pw * scale >= width else 1.1 * max(height / ph, width / pw)
        texture = photo.to(device=device, dtype=dtype)[None]
        if factor != 1:
            size = (math.ceil(ph * factor), math.ceil(pw * factor))
            texture = F.interpolate(texture, size=size, mode="bicubic", align_corners=False)
        textures.append(texture.round().clamp(0, 255)[0] / 255)
        sizes.append(textures[-1].shape[-2:])
    h_max, w_max = max(s[0] for s in sizes), max(s[1] for s in sizes)
    stacked = torch.stack([F.pad(t, (0, w_max - t.shape[-1], 0, h_max - t.shape[-2])) for t in textures])
    return stacked, torch.tensor(sizes, device=device)


def frost(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Blend with a random crop of one of five frost photos."""
    image_weight, frost_weight = FROST[severity - 1]
    b, _, h, w = x.shape
    textures, sizes = _frost_textures(h, w, scale, x.device, x.dtype)
    u = rand((3, b), x, generator)
    pick = (u[0] * len(textures)).long().clamp_(max=len(textures) - 1)
    top = (u[1] * (sizes[pick, 0] - h).clamp(min=1)).long()
    left = (u[2] * (sizes[pick, 1] - w).clamp(min=1)).long()
    rows = top[:, None, None] + torch.arange(h, device=x.device)[:, None]
    cols = left[:, None, None] + torch.arange(w, device=x.device)
    crops = textures[pick[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    return (image_weight * x + frost_weight * crops).clamp_(0, 1)


def fog(x: Tensor, severity: int, generator: torch.Generator | None, scale: float) -> Tensor:
    """Add a plasma-fractal haze (sized to the image) and rescale to keep the image's peak."""
    amount, decay = FOG[severity - 1]
    b, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    peak = x.amax((1, 2, 3), keepdim=True)
    haze = plasma_fractal(b, size, decay, x, generator)[:, None, :h, :w]
    return ((x + amount * haze) * peak / (peak + amount)).clamp_(0, 1)

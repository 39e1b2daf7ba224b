"""Input checks shared by ``corrupt`` and ``perturbation_sequence``."""

from __future__ import annotations

import torch
from torch import Tensor

from augment.base import check_pixel_range

REFERENCE_SIZE = 224
"""Image size (px) the reference's pixel-sized parameters were chosen for."""


def check_images(images: Tensor, generator: torch.Generator | None) -> None:
    """Raise a one-line error unless ``images`` is a float [B, 3, H, W] batch in [0, 1] of at least 8x8 px
    and ``generator`` (if any) lives on the same kind of device."""
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a [B, 3, H, W] tensor, got {shape}: add a batch axis or convert to RGB"
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be float in [0, 1], got {images.dtype}: use images.float() / 255")
    if min(images.shape[-2:]) < 8:
        raise ValueError(f"images must be at least 8x8 pixels, got {tuple(images.shape[-2:])}")
    check_pixel_range(images, "images")
    if generator is not None and generator.device.type != images.device.type:
        raise ValueError(
            f"generator is on {generator.device} but images on {images.device}: "
            f"pass torch.Generator(device=images.device)"
        )


def resolve_scale(images: Tensor, scale: float | None) -> float:
    """The factor for pixel-sized parameters: ``scale``, or shorter side / 224 when None."""
    if scale is None:
        return min(images.shape[-2:]) / REFERENCE_SIZE
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return float(scale)


def working_dtype(images: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (computed in float32, returned in the input dtype)."""
    return torch.promote_types(images.dtype, torch.float32)

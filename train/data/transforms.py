"""timm's ImageNet transforms, emitting un-normalised float images [3,H,W] in [0,1].

Normalisation happens on the device inside the module, after augmentation, so DeepAugment,
Noise2Net and the corruptions all see plain pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, create_transform
from torchvision import transforms

from train.config import DataConfig

IDENTITY_MEAN = (0.0, 0.0, 0.0)
IDENTITY_STD = (1.0, 1.0, 1.0)


def train_transform(cfg: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    """RandomResizedCrop(image_size, scale, ratio) + flip (+ optional colour jitter / auto-augment), then
    uint8 -> float [0, 1]. RandAugment / AugMix fill with ImageNet's mean colour, as in timm's own pipeline
    (``mean`` sets that fill; ``normalize=False`` leaves normalisation to the device)."""
    pipeline = create_transform(
        cfg.image_size,
        is_training=True,
        scale=tuple(cfg.scale),
        ratio=tuple(cfg.ratio),
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter or 0.0,
        auto_augment=cfg.auto_augment,
        interpolation=cfg.interpolation,
        mean=IMAGENET_DEFAULT_MEAN,
        normalize=False,
    )
    return transforms.Compose([pipeline, transforms.ConvertImageDtype(torch.float32)])


def eval_transform(cfg: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    """Resize(image_size / crop_pct) + CenterCrop(image_size), timm's evaluation transform."""
    return create_transform(
        cfg.image_size,
        is_training=False,
        crop_pct=cfg.crop_pct,
        interpolation=cfg.interpolation,
        mean=IDENTITY_MEAN,
        std=IDENTITY_STD,
    )

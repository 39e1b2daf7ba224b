"""EDSR-baseline x4 super-resolution network (Lim et al., 2017) with the public checkpoint's names.

Parameter names and shapes match the EDSR authors' ``edsr_baseline_x4`` checkpoint, so it loads with
``load_state_dict(strict=True)``. The network works on pixels in [0, 255] with the DIV2K RGB mean removed at the
input and added back at the output; :meth:`EDSR.forward` takes and returns [0, 1] images and does the scaling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)
RGB_RANGE = 255.0

FeatureFn = Callable[[Tensor], Tensor]


class MeanShift(nn.Conv2d):
    """Fixed 1x1 convolution that subtracts (``sign=-1``) or adds (``sign=1``) the RGB mean of [0, 255] pixels."""

    def __init__(self, sign: int, rgb_mean: tuple[float, float, float] = DIV2K_RGB_MEAN) -> None:
        super().__init__(3, 3, kernel_size=1)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            self.bias.copy_(sign * RGB_RANGE * torch.tensor(rgb_mean))
        self.requires_grad_(False)


class ResBlock(nn.Module):
    """conv3x3 -> ReLU -> conv3x3 with an identity shortcut (residual scale 1)."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(n_feats, n_feats, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class EDSR(nn.Module):
    """EDSR-baseline: head conv, ``n_resblocks`` residual blocks + conv with a long skip, x4 pixel-shuffle tail.

    Args:
        n_resblocks: residual blocks in the body (16 in the public checkpoint).
        n_feats: feature channels (64 in the public checkpoint).
    """

    scale = 4

    def __init__(self, n_resblocks: int = 16, n_feats: int = 64) -> None:
        super().__init__()
        self.sub_mean = MeanShift(sign=-1)
        self.add_mean = MeanShift(sign=1)
        self.head = nn.Sequential(nn.Conv2d(3, n_feats, 3, padding=1))
        self.body = nn.Sequential(
            *[ResBlock(n_feats) for _ in range(n_resblocks)], nn.Conv2d(n_feats, n_feats, 3, padding=1)
        )
        upsampler = nn.Sequential(
            nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1),
            nn.PixelShuffle(2),
            nn.Conv2d(n_feats, 4 * n_feats, 3, padding=1),
            nn.PixelShuffle(2),
        )
        self.tail = nn.Sequential(upsampler, nn.Conv2d(n_feats, 3, 3, padding=1))

    def forward(
        self,
        x: Tensor,
        pre: FeatureFn | None = None,
        mid: FeatureFn | None = None,
        mid_index: int = 5,
        skip: Mapping[int, Tensor | bool] | None = None,
    ) -> Tensor:
        """Super-resolve ``x``: [B, 3, h, w] in [0, 1] -> [B, 3, 4h, 4w], roughly in [0, 1] (not clamped).

        Optional activation hooks (used by DeepAugment; all default to the plain network):
            pre: applied to the head's output features [B, n_feats, h, w].
            mid: applied to the body features before body module ``mid_index`` (after that many residual blocks).
            skip: ``{body_index: [B] bool or True}``; where True that body module (residual block or the final
                body conv) is bypassed for that sample (``True``: for every sample, and the module is not run).
        """
        x = self.head(self.sub_mean(x * RGB_RANGE))
        if pre is not None:
            x = pre(x)
        res = x
        for i, module in enumerate(self.body):
            if mid is not None and i == mid_index:
                res = mid(res)
            flag = None if skip is None else skip.get(i)
            if flag is True:
                continue
            out = module(res)
            res = out if flag is None else torch.where(flag.view(-1, 1, 1, 1), res, out)
        return self.add_mean(self.tail(res + x)) / RGB_RANGE


def downscale(x: Tensor, factor: int = EDSR.scale) -> Tensor:
    """Antialiased bicubic downscaling: [B, 3, H, W] -> [B, 3, H // factor, W // factor], same value range."""
    size = (x.shape[-2] // factor, x.shape[-1] // factor)
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)

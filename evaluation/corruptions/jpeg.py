"""Baseline JPEG encode + decode: libjpeg-turbo on the CPU, a batched tensor model of it elsewhere.

On the CPU each image goes through libjpeg-turbo (``torchvision.io``), the codec PIL runs for
the reference (its output equals PIL's on the test photos); JPEG coding has no batched CPU
kernel and libjpeg-turbo's SIMD code beats any tensor rendition there. On other devices the
round trip runs as batched tensor ops modelled on libjpeg (nvJPEG's encoder, which
``torchvision`` uses on CUDA, codes chroma 4:4:4 and syncs per image): JFIF YCbCr with 8-bit
samples, 4:2:0 chroma (libjpeg's biased 2x2 means), 8x8 DCT, the standard (Annex K)
quantisation tables scaled by libjpeg's quality rule and capped at 255 (baseline), decoding
with libjpeg's "fancy" triangular chroma upsampling. Kornia's differentiable codec rounds
softly (its output is not libjpeg's), so the exact round trip is written out here.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
import torchvision.io
from torch import Tensor

from ._ops import pad

LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)
RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


@functools.lru_cache(maxsize=32)
def quantization_table(base: tuple[tuple[int, ...], ...], quality: int) -> tuple[tuple[int, ...], ...]:
    """libjpeg's ``jpeg_set_quality(quality, force_baseline=TRUE)`` scaling of a base table."""
    factor = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(tuple(min(max((v * factor + 50) // 100, 1), 255) for v in row) for row in base)


def _dct_matrix(like: Tensor) -> Tensor:
    """Orthonormal 8-point DCT-II matrix D [8, 8] (JPEG's 2-D DCT is ``D @ block @ D.T``)."""
    k = torch.arange(8, device=like.device, dtype=like.dtype)
    d = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * 0.5
    d[0] /= math.sqrt(2)
    return d


def _quantize_blocks(plane: Tensor, table: tuple[tuple[int, ...], ...]) -> Tensor:
    """DCT, quantise, dequantise and inverse-DCT every 8x8 block of [B, C, H, W] (H, W multiples of 8).

    Blocks are flattened to 64-vectors so that each transform (with the quantiser step folded
    in) is one [N, 64] x [64, 64] matrix product.
    """
    b, c, h, w = plane.shape
    d = _dct_matrix(plane)
    basis = torch.kron(d, d)  # [(u, v), (x, y)]: the 2-D DCT of a flattened block
    step = torch.tensor(table, device=plane.device, dtype=plane.dtype).reshape(64, 1)
    blocks = plane.reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4).reshape(-1, 64)
    levels = torch.round(blocks @ (basis / step).T)
    blocks = levels @ (basis * step)
    return blocks.reshape(b, c, h // 8, w // 8, 8, 8).transpose(3, 4).reshape(b, c, h, w)


def _mix(x: Tensor, matrix: tuple[tuple[float, ...], ...]) -> Tensor:
    """Per-pixel 3x3 colour transform of [B, 3, H, W] (explicit sums: faster than a batched matmul on CPU)."""
    out = torch.empty_like(x)
    for row, weights in enumerate(matrix):
        torch.mul(x[:, 0], weights[0], out=out[:, row])
        for column in (1, 2):
            if weights[column]:
                out[:, row].add_(x[:, column], alpha=weights[column])
    return out


def jpeg_round_trip(x: Tensor, quality: int) -> Tensor:
    """Encode float RGB [B, 3, H, W] in [0, 1] as baseline JPEG at ``quality`` and decode it
    (values rounded to 8 bits first, as an image file holds them)."""
    return libjpeg_round_trip(x, quality) if x.device.type == "cpu" else tensor_round_trip(x, quality)


def libjpeg_round_trip(x: Tensor, quality: int) -> Tensor:
    """``jpeg_round_trip`` of a CPU batch through libjpeg-turbo, image by image; the result is
    laid out channels-last (libjpeg's pixel order), saving a transposing copy."""
    b, c, h, w = x.shape
    out = torch.empty(b, h, w, c, dtype=x.dtype)
    scaled = torch.empty(h, w, c, dtype=x.dtype)
    pixels = torch.empty(h, w, c, dtype=torch.uint8)  # H x W x 3, libjpeg's order: no copy in the encoder
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs in favour of torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        for image, target in zip(x, out, strict=True):
            # to 8 bits, transposed while still float, cast through int32: 0.13 ms per 224 px
            # image against 0.23 ms for a float -> uint8 transposing copy (torch 2.14, one thread)
            scaled.copy_(image.permute(1, 2, 0)).mul_(255).add_(0.5).clamp_(0, 255)
            pixels.copy_(scaled.to(torch.int32))
            decoded = torchvision.io.decode_jpeg(
                torchvision.io.encode_jpeg(pixels.permute(2, 0, 1), quality=quality)
            )
            torch.div(decoded.permute(1, 2, 0), 255, out=target)
    return out.permute(0, 3, 1, 2)


def tensor_round_trip(x: Tensor, quality: int) -> Tensor:
    """``jpeg_round_trip`` as batched tensor ops on any device (libjpeg's integer steps modelled)."""
    h, w = x.shape[-2:]
    rgb = x * 255 if h % 16 == w % 16 == 0 else pad(x * 255, 0, -h % 16, 0, -w % 16, "replicate")
    ycc = _mix(rgb, RGB_TO_YCC).round_()  # libjpeg keeps 8-bit samples
    luma, chroma = ycc[:, :1] - 128, ycc[:, 1:]
    # libjpeg's 2x2 chroma means round with a bias alternating 1, 2 along the row
    bias = torch.tensor([1.0, 2.0], device=x.device, dtype=x.dtype).repeat(chroma.shape[-1] // 4)
    total = chroma[..., ::2, ::2] + chroma[..., 1::2, ::2] + chroma[..., ::2, 1::2] + chroma[..., 1::2, 1::2]
    chroma = torch.floor((total + bias) / 4)
    luma = (_quantize_blocks(luma, quantization_table(LUMA_TABLE, quality)) + 128).round_().clamp_(0, 255)
    chroma = _quantize_blocks(chroma, quantization_table(CHROMA_TABLE, quality)).round_().clamp_(-128, 127)
    chroma = torch.round(F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False))
    rgb = _mix(torch.cat([luma, chroma], 1), YCC_TO_RGB)
    return (rgb.round_().clamp_(0, 255) / 255)[..., :h, :w]

"""Noise2Net: random Res2Net blocks, x + eps * block(x), with fresh weights for every image at every step.

Each selected image gets its own four Res2Net-style bottleneck blocks mapping 3 -> 3 channels (1x1 conv to
``scale * hidden_planes`` channels + norm + ReLU, ``scale`` groups of which the first ``scale - 1`` go through
hierarchical 3x3-or-1x1 convs with kernel K in {1, 3} and dilation D in {1, 2, 3}, each adding the previous
group's output; 1x1 conv back to 3 channels + norm). Weights follow PyTorch's default conv initialisation
(U(-1/sqrt(fan_in), 1/sqrt(fan_in))) and are drawn per image and step; K and D are drawn per image and conv.
The reference's BatchNorm runs in train mode on the batch folded into channels, i.e. it normalises each image's
channels over H, W with unit scale and zero shift -- exactly an instance norm, used here. Conv biases that feed
a norm are cancelled by it and omitted.

Value range: the reference applies it to ImageNet-normalised tensors (std ~1). Here images in [0, 1] are
normalised with the ImageNet mean / std, perturbed exactly like the reference, mapped back and clamped to
[0, 1]. In pixel units that is x + eps * std_c * block(...) with std_c ~ 0.226: the reference's max_eps = 0.75
corresponds to ~0.17 of the [0, 1] range.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Generator, Tensor

from augment import cpu_kernels
from augment.base import (
    RandomAugmentation,
    check_images,
    check_positive,
    check_precision,
    check_probability,
    network_dtype,
    outside_autocast,
)
from augment.grouped import per_sample_conv2d
from augment.threads import run_on_cpu_threads, thread_balanced_parts

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-sample hierarchical conv variants (kernel, dilation); K = 1 makes D irrelevant. Probabilities follow
# K ~ U{1, 3}, D ~ U{1, 2, 3}: 1/2 for K = 1, 1/6 for each dilated 3x3.
_CONV_VARIANTS = ((1, 1), (3, 1), (3, 2), (3, 3))
_VARIANT_CUTS = torch.tensor([3, 4, 5])  # a U{0..5} draw below 3 -> K = 1, then D = 1, 2, 3


def _uniform(shape: tuple[int, ...], fan_in: int, dev: Generator, like: Tensor) -> Tensor:
    bound = fan_in**-0.5
    return (2 * torch.rand(shape, generator=dev, device=like.device, dtype=like.dtype) - 1) * bound


def _norm_(x: Tensor, relu: bool = True) -> Tensor:
    """In-place instance norm (eps 1e-5, biased variance, no affine) of x [m, C, H, W], then ReLU.

    Two reads (sum, sum of squares via ``vector_norm``, no squared copy) and in-place writes. The affine step is
    ``mul_`` then ``sub_``: ``addcmul`` with the per-channel shift as its first operand ran ~6x slower on a CPU.
    """
    n = x.shape[-2] * x.shape[-1]
    mean = x.sum((2, 3), keepdim=True) / n
    mean_sq = torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True).square_() / n
    rstd = (mean_sq - mean.square()).clamp_min_(0).add_(1e-5).rsqrt_()
    x.mul_(rstd).sub_(mean * rstd)
    return x.relu_() if relu else x


def _expand_affine(z: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """The 1x1 conv of z [m, 3, H, W] by weight [m, P, 3] with its instance norm folded in.

    Returns (affine [m, P, 4], inputs [m, 4, H * W]): ``bmm(affine[:, rows], inputs)`` is the normalised output
    of those channels. The norm's statistics follow from z's per-image mean and 3x3 covariance, so the expanded
    tensor is written once, already normalised.
    """
    m, c, h, w = z.shape
    flat = z.reshape(m, c, h * w)
    mean = flat.mean(2, keepdim=True)  # [m, 3, 1]
    centred = flat - mean
    cov = torch.bmm(centred, centred.transpose(1, 2)) / (h * w)  # [m, 3, 3], biased
    var = torch.einsum("moc,mcd,mod->mo", weight, cov, weight)
    scaled = weight * (var + 1e-5).rsqrt().unsqueeze(2)
    affine = torch.cat([scaled, -torch.bmm(scaled, mean)], dim=2)  # weight | bias
    return affine, torch.cat([flat, torch.ones_like(flat[:, :1])], dim=1)


class ConvGroup(NamedTuple):
    """The samples ``rows`` of one hierarchical conv that share a kernel size and dilation."""

    rows: Tensor  # [r] sample indices
    weight: Tensor  # [r, width, width, k, k]
    dilation: int


class BlockParams(NamedTuple):
    """Per-sample weights of one random Res2Net block for m images."""

    expand: Tensor  # [m, scale * width, 3] 1x1 conv
    convs: list[list[ConvGroup]]  # scale - 1 hierarchical convs
    project: Tensor  # [m, 3, scale * width] 1x1 conv

    def narrow(self, start: int, stop: int) -> BlockParams:
        """The weights of images start .. stop - 1, renumbered from 0."""
        convs = []
        for variants in self.convs:
            convs.append([])
            for rows, weight, dilation in variants:
                keep = (rows >= start) & (rows < stop)
                if keep.any():
                    convs[-1].append(ConvGroup(rows[keep] - start, weight[keep], dilation))
        return BlockParams(self.expand[start:stop], convs, self.project[start:stop])


def _hierarchical_conv(x: Tensor, weight: Tensor, dilation: int, conv_dtype: torch.dtype) -> Tensor:
    """Per-sample conv x [b, C, H, W] by weight [b, O, C, k, k] -> [b, O, H, W] in x's dtype; 3x3 kernels in
    ``conv_dtype`` (input and weights cast, output cast back), 1x1 ones (memory-bound products) in x's dtype."""
    dtype = conv_dtype if weight.shape[-1] > 1 else x.dtype
    return per_sample_conv2d(x.to(dtype), weight.to(dtype), dilation).to(x.dtype)


def _hierarchical_convs(x: Tensor, variants: list[ConvGroup], conv_dtype: torch.dtype) -> Tensor:
    """One hierarchical conv of x [m, C, H, W] (see :func:`_hierarchical_conv`), each sample by its variant's
    kernel; with several variants x is overwritten and returned."""
    if len(variants) == 1:
        _, weight, dilation = variants[0]
        return _hierarchical_conv(x, weight, dilation, conv_dtype)
    # disjoint rows: writing one variant's never changes another's input
    for rows, weight, dilation in variants:
        x.index_copy_(0, rows, _hierarchical_conv(x.index_select(0, rows), weight, dilation, conv_dtype))
    return x


def res2net_block(
    z: Tensor, params: BlockParams, scratch: Tensor | None = None, conv_dtype: torch.dtype = torch.float32
) -> Tensor:
    """Apply per-sample random Res2Net blocks: z [m, 3, H, W] -> [m, 3, H, W], each channel normalised per image.

    The groups are made one at a time -- expansion (normalised, ReLU), plus the previous group's output, conv,
    norm, ReLU, and at once summed into the final 1x1 conv -- so one group's tensors [m, width, H, W] are all
    that is live (cache-sized on a CPU for one 224 px image) and no concatenation is needed. ``scratch``
    [2, m, width, H * W] holds the groups' inputs (overwritten; passing the same one to every block saves
    re-allocating it). The 3x3 convs run in ``conv_dtype``, everything else in z's dtype.
    """
    m, _, h, w = z.shape
    scale = len(params.convs) + 1
    width = params.expand.shape[1] // scale
    if scratch is None:
        scratch = z.new_empty(2, m, width, h * w)
    affine, inputs = _expand_affine(z, params.expand)
    y = prev = None
    projects = params.project.split(width, 2)
    for g, (expand, project) in enumerate(zip(affine.split(width, 1), projects, strict=True)):
        sp = torch.bmm(expand, inputs, out=scratch[g % 2]).relu_().view(m, width, h, w)
        if g < scale - 1:
            if prev is not None:
                sp.add_(prev)
            sp = prev = _norm_(_hierarchical_convs(sp, params.convs[g], conv_dtype))
        group = sp.view(m, width, h * w)  # into the final 1x1 conv, summed over the groups
        y = torch.bmm(project, group) if y is None else torch.baddbmm(y, project, group)
    return _norm_(y.view(m, 3, h, w), relu=False)


def fused_res2net_step(z: Tensor, eps: Tensor, params: BlockParams, conv_dtype: torch.dtype) -> Tensor:
    """``z + eps * res2net_block(z, params, conv_dtype=conv_dtype)`` through :mod:`augment.cpu_kernels`, in place
    on z [m, 3, H, W] (contiguous float32 on the CPU, H * W a multiple of 16), eps [m]. Returns z.

    The hierarchical convs run in PyTorch as in :func:`res2net_block` (a lone 1x1 one inside the kernel); the
    rest -- the expansion with its norm folded in, ReLUs, the sum with the previous group, the norms, the final
    1x1 conv and its norm -- is one pass over the pixels per group plus one for the norm statistics. The input of
    a lone 3x3 variant is written in ``conv_dtype`` directly and its output read back in it.
    """
    m, _, h, w = z.shape
    scale = len(params.convs) + 1
    width = params.expand.shape[1] // scale
    affine = cpu_kernels.expand_affine(z, params.expand)
    y = torch.empty_like(z)
    prev = None
    for g, variants in enumerate(params.convs):
        lone = variants[0].weight if len(variants) == 1 else None
        w1x1 = lone if lone is not None and lone.shape[-1] == 1 else None
        dtype = conv_dtype if lone is not None and w1x1 is None else torch.float32
        sp = z.new_empty(m, width, h, w, dtype=dtype)
        rows = affine[:, g * width : (g + 1) * width]
        cpu_kernels.group_pass(
            z, rows, params.project, y, prev, (g - 1) * width, y_init=g == 1, w1x1=w1x1, out=sp
        )
        out = sp if w1x1 is not None else _hierarchical_convs(sp, variants, conv_dtype)
        out = out.contiguous()
        prev = (out, *cpu_kernels.norm_stats(out))
    last = (scale - 1) * width
    cpu_kernels.group_pass(
        z, affine[:, last:], params.project, y, prev, last - width, last, y_init=scale == 2
    )
    return cpu_kernels.residual_(z, y, eps)


class Noise2Net(RandomAugmentation):
    """Per-sample Noise2Net on float images [B, 3, H, W] in [0, 1] (same shape/dtype/device out, clamped; no
    autograd, outside any autocast: ``precision`` decides).

    Args:
        p: probability that an image is perturbed (reference: half of every batch).
        max_eps: eps ~ U(max_eps / 2, max_eps) per image, in ImageNet-normalised units (reference: 0.75).
        hidden_planes: channels per Res2Net group (reference: 16).
        scale: number of Res2Net groups (reference: 4).
        num_blocks: blocks applied in sequence (reference: 4).
        seed: seed of the generators (see :mod:`augment.base`).
        cpu_pass_pixels: on a CPU, at most this many pixels per pass (default: one 224 px image); batches run
            in sub-batches with the same result, which keeps a group's tensors in cache, concurrently on torch's
            threads, as many per thread (:func:`augment.threads.thread_balanced_parts`). Ignored on other
            devices (one pass).
        precision: dtype of the 3x3 convs ("auto": bf16 where bf16 convolutions are fast, like DeepAugment's
            networks; "fp32"; "bf16"); norms, 1x1 convs and the residual sums stay in float32.
        fused_cpu: on a CPU, run everything but the 3x3 convs as compiled C kernels (:mod:`augment.cpu_kernels`,
            built on first use with the system C compiler; without one, PyTorch ops and a warning) where H * W is
            a multiple of 16 and ``hidden_planes`` of 8; False: PyTorch ops only. Same result either way (float
            rounding apart).
    """

    def __init__(
        self,
        p: float = 0.5,
        max_eps: float = 0.75,
        hidden_planes: int = 16,
        scale: int = 4,
        num_blocks: int = 4,
        seed: int = 0,
        cpu_pass_pixels: int = 224 * 224,
        precision: str = "auto",
        fused_cpu: bool = True,
    ) -> None:
        super().__init__(seed)
        self.p = check_probability(p, "p")
        if not (math.isfinite(float(max_eps)) and float(max_eps) >= 0):
            raise ValueError(f"max_eps must be a finite number >= 0, got {max_eps}")
        if int(hidden_planes) < 1 or int(scale) < 2 or int(num_blocks) < 1:
            raise ValueError(
                f"need hidden_planes >= 1, scale >= 2, num_blocks >= 1; got {hidden_planes}, {scale}, {num_blocks}"
            )
        self.max_eps = float(max_eps)
        self.cpu_pass_pixels = check_positive(cpu_pass_pixels, "cpu_pass_pixels")
        self.precision = check_precision(precision)
        if not isinstance(fused_cpu, bool):
            raise ValueError(f"fused_cpu must be true or false, got {fused_cpu!r}")
        self.fused_cpu = fused_cpu
        self.hidden_planes, self.scale, self.num_blocks = int(hidden_planes), int(scale), int(num_blocks)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, max_eps={self.max_eps}, hidden_planes={self.hidden_planes}, scale={self.scale}, "
            f"precision={self.precision}, fused_cpu={self.fused_cpu}, seed={self.seed}"
        )

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """x: [B, 3, H, W] in [0, 1] -> same shape/dtype/device; a fraction ``p`` of the images perturbed."""
        check_images(x, "Noise2Net")
        host, _ = self.generators()
        index = (torch.rand(x.shape[0], generator=host) < self.p).nonzero().flatten()
        out = x.clamp(0, 1)
        if len(index):
            index = index.to(x.device, non_blocking=True)
            with outside_autocast(x):
                out[index] = self._perturb(x[index].float()).to(x.dtype)
        return out

    def _perturb(self, x: Tensor) -> Tensor:
        host, _ = self.generators()
        m, _, h, w = x.shape
        eps = torch.rand(m, generator=host) * (self.max_eps / 2) + self.max_eps / 2
        eps = eps.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
        z = (x - self.mean) / self.std
        blocks = [self.sample_block(m, z) for _ in range(self.num_blocks)]
        cpu = z.device.type == "cpu"
        # the kernels are built here (library()), before any sub-batch thread needs them
        fused = cpu and self.fused_cpu and cpu_kernels.supported(z, self.hidden_planes)
        fused = fused and cpu_kernels.library() is not None
        passes = thread_balanced_parts(m, self.cpu_pass_pixels // (h * w)) if cpu else [(0, m)]
        if len(passes) == 1:
            return self._to_pixels(self._apply_blocks(z, eps, blocks, fused))
        out = torch.empty_like(z)

        def sub_batch(start: int, stop: int) -> Callable[[], None]:
            def run() -> None:
                parts = [b.narrow(start, stop) for b in blocks]
                out[start:stop] = self._apply_blocks(z[start:stop], eps[start:stop], parts, fused)

            return run

        run_on_cpu_threads([sub_batch(start, stop) for start, stop in passes])
        return self._to_pixels(out)

    def _apply_blocks(self, z: Tensor, eps: Tensor, blocks: list[BlockParams], fused: bool) -> Tensor:
        """z + eps * block(z) for each block in turn: z [m, 3, H, W] normalised, eps [m, 1, 1, 1]; ``fused``:
        through the CPU kernels (:func:`fused_res2net_step`)."""
        conv_dtype = network_dtype(z.device, self.precision, z.dtype)
        if fused:
            z = z.clone(memory_format=torch.contiguous_format)
            for params in blocks:
                fused_res2net_step(z, eps, params, conv_dtype)
            return z
        scratch = z.new_empty(2, z.shape[0], self.hidden_planes, z.shape[-2] * z.shape[-1])
        for params in blocks:
            z = torch.addcmul(z, eps, res2net_block(z, params, scratch, conv_dtype))
        return z

    def _to_pixels(self, z: Tensor) -> Tensor:
        return (z * self.std + self.mean).clamp(0, 1)

    def sample_block(self, m: int, like: Tensor) -> BlockParams:
        """Draw fresh per-sample weights (and kernel sizes / dilations) of one block for ``m`` images."""
        host, dev = self.generators()
        width = self.hidden_planes
        planes = width * self.scale
        convs = []
        for _ in range(self.scale - 1):
            variant = torch.bucketize(torch.randint(0, 6, (m,), generator=host), _VARIANT_CUTS, right=True)
            convs.append([])
            for v, (k, dilation) in enumerate(_CONV_VARIANTS):
                rows = (variant == v).nonzero().flatten()
                if len(rows):
                    weight = _uniform((len(rows), width, width, k, k), width * k * k, dev, like)
                    convs[-1].append(ConvGroup(rows.to(like.device, non_blocking=True), weight, dilation))
        expand = _uniform((m, planes, 3), 3, dev, like)
        project = _uniform((m, 3, planes), planes, dev, like)
        return BlockParams(expand, convs, project)

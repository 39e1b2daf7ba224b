"""Run G differently perturbed copies of one network on G groups of a batch in one pass.

A batch of ``m`` images is split into ``G = ceil(m / images_per_network)`` contiguous groups of equal size ``n``
(the last one padded by repeating images whose outputs are dropped). Parameters that differ between groups are
stacked to [G, ...]; parameters no group changed stay shared. ``torch.vmap`` over ``torch.func.functional_call``
then folds the group dimension into the convolutions: a layer with stacked weights runs as one grouped convolution
(groups folded into channels), a shared layer as one ordinary convolution over all G * n images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

Weights = dict[str, Tensor]


def group_layout(m: int, images_per_network: int) -> tuple[int, int]:
    """(number of groups G, images per group n) for ``m`` images, with G * n >= m and n <= images_per_network."""
    groups = max(1, math.ceil(m / images_per_network))
    return groups, math.ceil(m / groups)


def stack_weights(
    base: Mapping[str, Tensor], variants: Sequence[Mapping[str, Tensor]]
) -> tuple[Weights, dict[str, int | None]]:
    """Stack per-group weight dicts: (weights, in_dims) for :func:`grouped_forward`.

    A name whose tensor is the base tensor in every variant stays shared (in_dim None); any other name is stacked
    to [G, ...] (in_dim 0).
    """
    weights: Weights = {}
    in_dims: dict[str, int | None] = {}
    for name, tensor in base.items():
        if all(v[name] is tensor for v in variants):
            weights[name], in_dims[name] = tensor, None
        else:
            weights[name], in_dims[name] = torch.stack([v[name] for v in variants]), 0
    return weights, in_dims


def cast_for_network(
    dtype: torch.dtype, x: Tensor, weights: Weights, per_sample: Any
) -> tuple[Tensor, Weights, Any]:
    """(x, weights, per_sample) in the dtype a network runs in: ``x`` also channels-last (the networks' layout,
    faster convolutions on CPU and GPU), floating per-sample tensors cast, integer / bool ones kept."""
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)
    weights = {name: w.to(dtype) for name, w in weights.items()}
    per_sample = tree_map(lambda t: t.to(dtype) if t.is_floating_point() else t, per_sample)
    return x, weights, per_sample


def grouped_forward(
    net: nn.Module,
    weights: Weights,
    in_dims: Mapping[str, int | None],
    x: Tensor,
    per_sample: Any,
    hooks: Callable[..., dict[str, Any]],
    max_images: int | None = None,
) -> Tensor:
    """Run ``net`` with group g's weights on ``x[g]``.

    Args:
        net: the network; its own parameters are ignored in favour of ``weights``.
        weights, in_dims: from :func:`stack_weights`.
        x: [G, n, ...] network input.
        per_sample: pytree of tensors with leading dims [G, n] (per-sample perturbation parameters).
        hooks: ``hooks(slice, plain=...)`` maps one group's ``per_sample`` slice (leading dim <= n) to keyword
            arguments of ``net.forward``. ``plain=True`` when the slice holds ordinary tensors (a pass without
            vmap), so the hooks may look at its values, e.g. to leave out work no image of the slice needs.
        max_images: at most this many images per pass (None: all G * n in one pass). Smaller passes give the
            same result (in fp32; in bf16, within its rounding); on a CPU they keep activations in
            cache and below the allocator's fresh-mapping size.

    Returns:
        [G, n, ...] network output.
    """

    def one_group(w: Weights, xg: Tensor, ps: Any, plain: bool = False) -> Tensor:
        return functional_call(net, w, (xg,), hooks(ps, plain=plain))

    groups, n = x.shape[:2]
    per_pass = groups * n if max_images is None else max(1, max_images)
    # at most one group per pass: its own weights, plain layers (vmap would only add cost)
    if per_pass < 2 * n:
        step, outs = min(n, per_pass), []
        for g in range(groups):
            w = {k: v if in_dims[k] is None else v[g] for k, v in weights.items()}
            parts = [(g, slice(i, i + step)) for i in range(0, n, step)]
            outs.append(
                torch.cat(
                    [one_group(w, x[j], tree_map(lambda t, j=j: t[j], per_sample), True) for j in parts]
                )
            )
        return torch.stack(outs)
    run, step = vmap(one_group, in_dims=(dict(in_dims), 0, 0)), max(1, per_pass // n)
    outs = []
    for g in range(0, groups, step):
        part = slice(g, g + step)
        w = {k: v if in_dims[k] is None else v[part] for k, v in weights.items()}
        outs.append(run(w, x[part], tree_map(lambda t, part=part: t[part], per_sample)))
    return torch.cat(outs)


def per_sample_conv2d(x: Tensor, weight: Tensor, dilation: int = 1) -> Tensor:
    """Convolve each sample with its own kernel, "same" padding: x [b, C, H, W], weight [b, O, C, k, k] -> [b, O, H, W].

    The samples are folded into channels and run as one grouped convolution (groups=b); 1x1 kernels run as a
    batched matrix product.
    """
    b, c, h, w = x.shape
    k = weight.shape[-1]
    if k == 1:
        return torch.bmm(weight.flatten(2), x.reshape(b, c, h * w)).view(b, -1, h, w)
    out = F.conv2d(
        x.reshape(1, b * c, h, w),
        weight.reshape(b * weight.shape[1], c, k, k),
        padding=dilation * (k - 1) // 2,
        dilation=dilation,
        groups=b,
    )
    return out.reshape(b, -1, h, w)

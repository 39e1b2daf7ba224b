"""CAE perturbations: the weight options (one per network) and the nine per-sample latent-code options.

Option numbers follow the DeepAugment reference (docs/deepaugment.md has the table and the places where this
code implements the intended operation instead of a reference bug). Layers are numbered 0..20 in the order of
the reference's weight list (:data:`LAYERS`); a "filter" is an output channel (dim 1 of a transposed conv).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from augment.base import draw_choice, draw_float, draw_int, draw_ints
from augment.grouped import per_sample_conv2d

Weights = dict[str, Tensor]

LAYERS = (
    "e_conv_1.1",
    "e_conv_2.1",
    "e_block_1.1",
    "e_block_1.4",
    "e_block_2.1",
    "e_block_2.4",
    "e_block_3.1",
    "e_block_3.4",
    "e_conv_3.0",
    "d_up_conv_1.0",
    "d_up_conv_1.3",
    "d_block_1.1",
    "d_block_1.4",
    "d_block_2.1",
    "d_block_2.4",
    "d_block_3.1",
    "d_block_3.4",
    "d_up_conv_2.0",
    "d_up_conv_2.3",
    "d_up_conv_3.0",
    "d_up_conv_3.3",
)
TRANSPOSED = frozenset({"d_up_conv_1.3", "d_up_conv_2.3"})
WEIGHT_OPTIONS = tuple(
    range(8)
)  # the reference draws from options 0-7; option 8 exists but is never drawn there
ALL_WEIGHT_OPTIONS = tuple(range(9))
LATENT_OPTIONS = tuple(range(9))
# Layers each weight option may hit (indexes into LAYERS): e_conv_3 .. d_block_2.1, with the reference's exceptions.
OPTION_LAYERS = {0: range(11, 16), 3: range(10, 14)}
DEFAULT_LAYERS = range(8, 14)


def _out_dim(layer: str) -> int:
    return 1 if layer in TRANSPOSED else 0


def _filter_sign(w: Tensor, dim: int, index: list[int], fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply ``fn`` to the filters ``index`` (each once, duplicates ignored) along output dim ``dim``."""
    chosen = torch.zeros(w.shape[dim], dtype=torch.bool)
    chosen[index] = True
    shape = [1] * w.dim()
    shape[dim] = -1
    return torch.where(chosen.to(w.device).view(shape), fn(w), w)


def _apply_to_filters(
    w: Weights, layer: str, count: int, host: Generator, fn: Callable[[Tensor], Tensor]
) -> None:
    """``fn`` on ``count`` filters drawn with replacement (weight and bias) of ``layer``."""
    dim = _out_dim(layer)
    index = draw_ints(host, 0, w[f"{layer}.weight"].shape[dim], count)
    w[f"{layer}.weight"] = _filter_sign(w[f"{layer}.weight"], dim, index, fn)
    w[f"{layer}.bias"] = _filter_sign(w[f"{layer}.bias"], 0, index, fn)


def _neg_gelu(t: Tensor) -> Tensor:
    return -F.gelu(t)


def _rand_like(t: Tensor, dev: Generator) -> Tensor:
    return torch.rand(t.shape, generator=dev, device=t.device, dtype=t.dtype)


def perturb_weights(base: Weights, options: Sequence[int], host: Generator, dev: Generator) -> Weights:
    """A copy of ``base`` (CAE names) after one option drawn from ``options`` (none when empty)."""
    w = dict(base)
    if not options:
        return w
    option = draw_choice(host, options, 1)[0]
    layers = OPTION_LAYERS.get(option, DEFAULT_LAYERS)
    li, lj = (LAYERS[k] for k in draw_choice(host, layers, 2))
    wi = f"{li}.weight"
    if option == 0:  # reverse the output-channel order of two layers (weight and bias)
        for layer in {li, lj}:
            for key in (f"{layer}.weight", f"{layer}.bias"):
                w[key] = w[key].flip(_out_dim(layer) if key.endswith("weight") else 0)
    elif option == 1:  # negate 12 filters
        _apply_to_filters(w, li, 12, host, torch.neg)
    elif option == 2:  # zero 25 filters
        _apply_to_filters(w, li, 25, host, torch.zeros_like)
    elif option == 3:  # -GELU on 25 filters
        _apply_to_filters(w, li, 25, host, _neg_gelu)
    elif option == 4:  # scale two layers by a factor in [1, 1 + 8u), u per layer
        for layer in (li, lj):
            key = f"{layer}.weight"
            w[key] = w[key] * (1 + 8 * draw_float(host) * _rand_like(w[key], dev))
    elif option == 5:  # 0/1 or +-1 mask over one layer
        keep = _rand_like(w[wi], dev) >= 0.5
        signs = (0.0, 1.0) if draw_int(host, 0, 2) == 0 else (-1.0, 1.0)
        w[wi] = w[wi] * torch.where(keep, signs[1], signs[0]).to(w[wi].dtype)
    elif option == 6:  # rotate every kernel by k * 90 degrees
        w[wi] = torch.rot90(w[wi], k=draw_int(host, 1, 4), dims=(2, 3))
    elif option == 7:  # negate ~1/5 of the filters (weight only)
        dim = _out_dim(li)
        index = draw_ints(host, 0, w[wi].shape[dim], w[wi].shape[dim] // 5)
        w[wi] = _filter_sign(w[wi], dim, index, torch.neg)
    elif option == 8:  # keep only the largest tap of each kernel
        flat = w[wi].flatten(2)
        top = flat.max(-1, keepdim=True)
        w[wi] = torch.zeros_like(flat).scatter(-1, top.indices, top.values).view_as(w[wi])
    return w


# Per-channel flip codes of the latent options 4 and 5.
_NO_FLIP, _FLIP_H, _FLIP_W, _FLIP_HW = range(4)


def _identity_kernels(m: int, c: int) -> Tensor:
    k = torch.zeros(m, c, c, 3, 3)
    k[:, torch.arange(c), torch.arange(c), 1, 1] = 1.0
    return k


def _shift_kernels(c: int, host: Generator) -> Tensor:
    """Option 8: one-hot per-channel shift kernels; a channel keeps the previous channel's shift with p 0.8."""
    redraw = torch.rand(c, generator=host) < 0.2
    redraw[0] = True
    taps = torch.randint(0, 9, (c,), generator=host)
    source = torch.where(redraw, torch.arange(c), 0).cummax(0).values
    k = torch.zeros(c, c, 9)
    k[torch.arange(c), torch.arange(c), taps[source]] = 1.0
    return k.view(c, c, 3, 3)


def sample_latent(
    m: int,
    size: tuple[int, int],
    options: Sequence[int],
    host: Generator,
    dev: Generator,
    dtype: torch.dtype,
    channels: int = 32,
) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor]], dict[str, Any]]]:
    """Per-sample latent perturbations and binarisation noise for ``m`` images with codes [m, 32, h, w].

    Returns:
        (params, hooks): ``params`` is a dict of device tensors with leading dim m; ``hooks(params_slice)`` gives
        the keyword arguments (noise, latent, code) of :meth:`augment.networks.CAE.forward` for any slice of it.
    """
    device = dev.device
    h, w = size
    opt = torch.tensor(draw_choice(host, options, m)) if options else torch.full((m,), -1)
    params = {"noise": torch.rand((m, channels, h, w), generator=dev, device=device, dtype=dtype)}

    def per_sample(values: Tensor) -> Tensor:
        return values.to(device, non_blocking=True).view(-1, 1, 1, 1)

    if (opt == 0).any():  # multiply the binary code by a factor in [3, 3 + 4u)
        u = per_sample(torch.rand(m, generator=host, dtype=torch.float64).to(dtype))
        factor = 3 + 4 * u * torch.rand((m, channels, h, w), generator=dev, device=device, dtype=dtype)
        params["factor"] = torch.where(per_sample(opt == 0), factor, 1.0)
    if ((opt == 1) | (opt == 2)).any():  # zero ~20 % / negate ~10 % of the positions
        r = torch.rand((m, 1, h, w), generator=dev, device=device, dtype=dtype)
        zero, negate = (r > 0.2).to(dtype), torch.where(r > 0.1, 1.0, -1.0).to(dtype)
        params["mask"] = torch.where(
            per_sample(opt == 1), zero, torch.where(per_sample(opt == 2), negate, 1.0)
        )
    if ((opt == 4) | (opt == 5)).any():  # flip 5 channels / all channels over H, W or both
        flip = torch.full((m, channels), _NO_FLIP)
        axes = torch.randint(_FLIP_H, _FLIP_HW + 1, (m,), generator=host)
        five = torch.randint(0, channels, (m, 5), generator=host)
        rows = (opt == 4).nonzero().flatten()
        flip[rows[:, None], five[rows]] = axes[rows, None]
        flip[opt == 5] = axes[opt == 5, None]
        params["flip"] = flip.to(device, non_blocking=True)
    conv_options = (opt == 3) | (opt == 6) | (opt == 7) | (opt == 8)
    if conv_options.any():  # channel-mixing 3x3 convolutions of the code
        kernel = _identity_kernels(m, channels)
        for s in (opt == 3).nonzero().flatten().tolist():  # permute the first 10 channels
            perm = torch.cat([torch.randperm(10, generator=host), torch.arange(10, channels)])
            kernel[s] = 0.0
            kernel[s, torch.arange(channels), perm, 1, 1] = 1.0
        rows = (opt == 6).nonzero().flatten()  # identity + U(-0.1, 0.1) noise
        kernel[rows] += (torch.rand((len(rows), channels, channels, 3, 3), generator=host) - 0.5) * 0.2
        for s in (opt == 7).nonzero().flatten().tolist():  # identity + a random cross-channel tap per channel
            extra = (torch.rand(channels, generator=host) < 0.5).nonzero().flatten()
            src = torch.randint(0, channels, (len(extra),), generator=host)
            tap = torch.randint(0, 9, (len(extra),), generator=host)
            kernel[s].view(channels, channels, 9)[extra, src, tap] = 1.0
        for s in (opt == 8).nonzero().flatten().tolist():
            kernel[s] = _shift_kernels(channels, host)
        params["kernel"] = kernel.to(device, dtype, non_blocking=True)

    def hooks(p: dict[str, Tensor], plain: bool = False) -> dict[str, Any]:
        latent_keys = {"mask", "flip", "kernel"} & p.keys()
        return {
            "noise": p["noise"],
            "latent": (lambda z: _apply_latent(z, p.get("mask"), p.get("flip"), p.get("kernel")))
            if latent_keys
            else None,
            "code": (lambda b: (b + 1) * p["factor"] - 1) if "factor" in p else None,
        }

    return params, hooks


def _apply_latent(z: Tensor, mask: Tensor | None, flip: Tensor | None, kernel: Tensor | None) -> Tensor:
    """z [m, C, h, w]; mask [m, 1, h, w]; flip [m, C] codes; kernel [m, C, C, 3, 3] per-sample convolution."""
    if mask is not None:
        z = z * mask
    if flip is not None:
        code = flip[:, :, None, None]
        z = torch.where(
            code == _FLIP_H,
            z.flip(-2),
            torch.where(code == _FLIP_W, z.flip(-1), torch.where(code == _FLIP_HW, z.flip(-2, -1), z)),
        )
    if kernel is not None:
        z = per_sample_conv2d(z, kernel)
    return z

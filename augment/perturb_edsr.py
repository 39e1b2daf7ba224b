"""EDSR perturbations: the 17 weight options and the per-sample "pre" and "body" activation options.

Option numbers follow the DeepAugment reference (docs/deepaugment.md has the table and the places where this
code implements the intended operation instead of a reference bug). "Block i" is residual block i of the body,
conv0 / conv2 its first / second convolution. Weight options take a dict of tensors and replace entries with new
tensors (never writing into the base weights); activation options return per-sample parameters [m, ...] plus the
hooks that apply them inside :meth:`augment.networks.EDSR.forward`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Generator, Tensor

from augment.base import draw_choice, draw_float, draw_int, draw_ints

Weights = dict[str, Tensor]

WEIGHT_OPTIONS = tuple(range(17))
WEIGHT_DRAWS = 3
PRE_OPTIONS = (1, 2, 3, 4)  # 1 swap channels, 2 zero ~5 %, 3 negate ~2.5 %, 4 nothing
BODY_OPTIONS = (1, 2, 3, 4, 5)  # 1 negate, 2 ReLU / GELU, 3 flip, 4 skip blocks, 5 nothing
MID_INDEX = 5  # the "body" option acts after this many residual blocks

_EVERY_THIRD = (0, 3, 6, 9)
_LAPLACE_4 = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
_LAPLACE_8 = ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0))
_RANDOM_BLOCKS = 15  # options 11-16 pick among blocks 0..14


def _w(i: int, j: int) -> str:
    return f"body.{i}.body.{j}.weight"


def _b(i: int, j: int) -> str:
    return f"body.{i}.body.{j}.bias"


def _rand_like(t: Tensor, dev: Generator) -> Tensor:
    return torch.rand(t.shape, generator=dev, device=t.device, dtype=t.dtype)


def _pick(host: Generator, blocks: Sequence[int]) -> int:
    return draw_choice(host, blocks, 1)[0]


def _flip_out_channels(w: Weights, host: Generator, dev: Generator) -> None:  # 0
    i = _pick(host, _EVERY_THIRD)
    for key in (_w(i, 0), _b(i, 0), _w(i, 2), _b(i, 2)):
        w[key] = w[key].flip(0)


def _negate_conv0(w: Weights, host: Generator, dev: Generator) -> None:  # 1
    i = _pick(host, (1, 4, 7))
    w[_w(i, 0)], w[_b(i, 0)] = -w[_w(i, 0)], -w[_b(i, 0)]


def _zero_conv0(w: Weights, host: Generator, dev: Generator) -> None:  # 2
    i = _pick(host, _EVERY_THIRD)
    w[_w(i, 0)], w[_b(i, 0)] = torch.zeros_like(w[_w(i, 0)]), torch.zeros_like(w[_b(i, 0)])


def _neg_gelu(w: Weights, host: Generator, dev: Generator) -> None:  # 3
    i = _pick(host, _EVERY_THIRD)
    for key in (_w(i, 0), _w(i, 2)):
        w[key] = -F.gelu(w[key])


def _times_kernel(kernel: tuple) -> Callable[[Weights, Generator, Generator], None]:  # 4, 5
    def option(w: Weights, host: Generator, dev: Generator) -> None:
        key = _w(_pick(host, _EVERY_THIRD), 0)
        w[key] = w[key] * torch.tensor(kernel, device=w[key].device, dtype=w[key].dtype)

    return option


def _scale_conv2(w: Weights, host: Generator, dev: Generator) -> None:  # 6 (intended: factor around 1)
    key = _w(_pick(host, _EVERY_THIRD), 2)
    u = draw_float(host)
    w[key] = w[key] * (1 + 2 * u * (2 * _rand_like(w[key], dev) - 1))


def _flip_conv0_negate_conv2(w: Weights, host: Generator, dev: Generator) -> None:  # 7
    i = _pick(host, _EVERY_THIRD)
    w[_w(i, 0)], w[_w(i, 2)] = w[_w(i, 0)].flip(-1), -w[_w(i, 2)]


def _conv_weights(weight: Tensor, kernel: Tensor) -> Tensor:
    """Convolve the weight tensor [O, I, 3, 3], read as O images of I channels, with ``kernel`` [I, I, 3, 3]."""
    return F.conv2d(weight, kernel, padding=1)


def _shift_conv0(w: Weights, host: Generator, dev: Generator) -> None:  # 8
    key = _w(_pick(host, (1, 5, 9)), 0)
    channels = w[key].shape[1]
    sign = torch.tensor(draw_ints(host, 0, 2, channels), dtype=torch.float32) * 2 - 1
    ys, xs = (torch.tensor(draw_ints(host, 0, 3, channels)) for _ in range(2))
    one_hot = torch.zeros(channels, 3, 3)
    one_hot[torch.arange(channels), ys, xs] = sign  # input channel j: tap (ys[j], xs[j]) with sign[j]
    kernel = one_hot.expand(channels, -1, -1, -1).to(w[key].device, w[key].dtype)  # the same for every output
    w[key] = _conv_weights(w[key], kernel)


def _noise_conv0(w: Weights, host: Generator, dev: Generator) -> None:  # 9
    key = _w(_pick(host, _EVERY_THIRD), 0)
    c = w[key].shape[1]
    u = draw_float(host)
    rand = torch.rand((c, c, 3, 3), generator=dev, device=w[key].device, dtype=w[key].dtype)
    w[key] = _conv_weights(w[key], (2 * rand * u - 1) / 6)


def _log_gamma(alpha: float, shape: tuple[int, ...], dev: Generator, device: torch.device) -> Tensor:
    """log of Gamma(alpha, 1) samples, alpha < 1: Marsaglia-Tsang for alpha + 1, boosted by U^(1/alpha).

    Rejected proposals (4.2% for alpha = 0.1) are re-drawn for those elements only, until every one is
    accepted: exact, and a few short rounds instead of a fixed stack of proposals per element.
    """
    d = alpha + 1 - 1 / 3
    c = 1 / (9 * d) ** 0.5
    log_g = torch.empty(shape, device=device).view(-1)
    pending = torch.arange(log_g.numel(), device=device)
    while len(pending):
        x = torch.randn(len(pending), generator=dev, device=device)
        u = torch.rand(len(pending), generator=dev, device=device)
        v = ((1 + c * x) ** 3).clamp_min(1e-12)
        accept = (1 + c * x > 0) & (u.log() < 0.5 * x**2 + d - d * v + d * v.log())
        log_g[pending[accept]] = (d * v[accept]).log()
        pending = pending[~accept]
    boost = 1 - torch.rand(shape, generator=dev, device=device)  # in (0, 1]
    return log_g.view(shape) + boost.log() / alpha


def _dirichlet_conv2(w: Weights, host: Generator, dev: Generator) -> None:  # 10
    key = _w(_pick(host, (1, 5, 9)), 2)
    c = w[key].shape[1]
    taps = torch.softmax(_log_gamma(0.1, (c, c, 9), dev, w[key].device), dim=-1)
    w[key] = _conv_weights(w[key], taps.view(c, c, 3, 3).to(w[key].dtype))


def _noise_conv2(w: Weights, host: Generator, dev: Generator) -> None:  # 11
    key = _w(draw_int(host, 0, _RANDOM_BLOCKS), 2)
    w[key] = w[key] + (_rand_like(w[key], dev) - 0.5)


def _rot90(w: Weights, host: Generator, dev: Generator) -> None:  # 12
    for _ in range(5):
        key = _w(draw_int(host, 0, _RANDOM_BLOCKS), draw_choice(host, (0, 2), 1)[0])
        k = draw_int(host, 1, 4)
        dims = (2, 3) if draw_int(host, 0, 2) == 0 else (0, 1)
        w[key] = torch.rot90(w[key], k=k, dims=dims)


def _sign_mask(w: Weights, host: Generator, dev: Generator) -> None:  # 13
    for i in draw_ints(host, 0, _RANDOM_BLOCKS, 5):
        key = _w(i, 0)
        w[key] = w[key] * torch.where(_rand_like(w[key], dev) >= 0.5, 1.0, -1.0).to(w[key].dtype)


def _binary_mask(w: Weights, host: Generator, dev: Generator) -> None:  # 14
    for i in draw_ints(host, 0, _RANDOM_BLOCKS, 5):
        key = _w(i, 0)
        w[key] = w[key] * (_rand_like(w[key], dev) >= 0.5).to(w[key].dtype)


def _negate_filters(w: Weights, host: Generator, dev: Generator) -> None:  # 15
    for i in draw_ints(host, 0, _RANDOM_BLOCKS, 5):
        key = _w(i, 0)
        out = w[key].shape[0]
        sign = torch.ones(out)
        sign[draw_ints(host, 0, out, out // 2)] = -1.0
        w[key] = w[key] * sign.to(w[key].device, w[key].dtype).view(-1, 1, 1, 1)


def _keep_max_tap(w: Weights, host: Generator, dev: Generator) -> None:  # 16
    for _ in range(5):
        key = _w(draw_int(host, 0, _RANDOM_BLOCKS), draw_choice(host, (0, 2), 1)[0])
        flat = w[key].flatten(2)
        top = flat.max(-1, keepdim=True)
        w[key] = torch.zeros_like(flat).scatter(-1, top.indices, top.values).view_as(w[key])


WEIGHT_OPTION_FNS: tuple[Callable[[Weights, Generator, Generator], None], ...] = (
    _flip_out_channels,
    _negate_conv0,
    _zero_conv0,
    _neg_gelu,
    _times_kernel(_LAPLACE_4),
    _times_kernel(_LAPLACE_8),
    _scale_conv2,
    _flip_conv0_negate_conv2,
    _shift_conv0,
    _noise_conv0,
    _dirichlet_conv2,
    _noise_conv2,
    _rot90,
    _sign_mask,
    _binary_mask,
    _negate_filters,
    _keep_max_tap,
)


def perturb_weights(
    base: Weights, options: Sequence[int], host: Generator, dev: Generator, draws: int = WEIGHT_DRAWS
) -> Weights:
    """A copy of ``base`` (EDSR-baseline names) after ``draws`` options drawn with replacement from ``options``.

    Unchanged entries are the base tensors themselves; changed ones are new tensors.
    """
    weights = dict(base)
    if options:
        for option in draw_choice(host, options, draws):
            WEIGHT_OPTION_FNS[option](weights, host, dev)
    return weights


# Codes of the per-sample "body" operation after block MID_INDEX.
_NONE, _NEG, _RELU, _GELU, _FLIP_CH, _FLIP_CW = range(6)


def _swap_permutations(m: int, channels: int, host: Generator, swaps: int = 5) -> Tensor:
    """[m, channels] channel orders, each the identity after ``swaps`` random transpositions."""
    perm = torch.arange(channels).repeat(m, 1)
    rows = torch.arange(m)
    pairs = torch.randint(0, channels, (swaps, 2, m), generator=host)
    for a, b in pairs:
        perm[rows, a], perm[rows, b] = perm[rows, b], perm[rows, a]
    return perm


def sample_activations(
    m: int,
    feats: int,
    size: tuple[int, int],
    n_body: int,
    pre_options: Sequence[int],
    body_options: Sequence[int],
    host: Generator,
    dev: Generator,
    dtype: torch.dtype,
) -> tuple[dict[str, Any], Callable[[dict[str, Any]], dict[str, Any]]]:
    """Per-sample activation perturbations for ``m`` images.

    Args:
        feats, size: feature channels and (h, w) of the head's output.
        n_body: number of body modules (residual blocks + final conv).
        pre_options, body_options: allowed option numbers (empty = never perturb).

    Returns:
        (params, hooks): ``params`` is a dict of device tensors with leading dim m; ``hooks(params_slice)``
        gives the keyword arguments (pre, mid, mid_index, skip) of :meth:`EDSR.forward` for any slice of it;
        ``hooks(params_slice, plain=True)`` on CPU tensors also leaves out the head and body options and skips
        that no image of the slice has (a skip every image of the slice takes becomes ``True``: the module is not run).
    """
    device = dev.device
    pre = torch.tensor(draw_choice(host, pre_options or (4,), m))
    body = torch.tensor(draw_choice(host, body_options or (5,), m))
    # the head option codes, so that plain passes can skip the work no image of theirs takes
    params: dict[str, Any] = {"pre": pre.to(device, non_blocking=True)}
    if (pre == 1).any():
        perm = _swap_permutations(m, feats, host)
        perm[pre != 1] = torch.arange(feats)
        params["perm"] = perm.to(device, non_blocking=True)
    masked = ((pre == 2) | (pre == 3)).nonzero().flatten()
    if len(masked):  # noise only for the images that take a mask; the others' mask is all ones
        u = torch.rand((len(masked), feats, *size), generator=dev, device=device, dtype=dtype)
        kind = pre[masked].to(device, non_blocking=True).view(-1, 1, 1, 1)
        mask = torch.ones((m, feats, *size), device=device, dtype=dtype)
        mask[masked.to(device, non_blocking=True)] = torch.where(
            kind == 2, (u >= 0.05).to(dtype), 1 - 2 * (u < 0.025).to(dtype)
        )
        params["mask"] = mask
    coin = torch.randint(0, 3, (m,), generator=host) == 1  # ReLU (else GELU), flip (C, H) (else (C, W)): 1/3
    mid = torch.full((m,), _NONE)
    mid[body == 1] = _NEG
    mid[body == 2] = torch.where(coin, _RELU, _GELU)[body == 2]
    mid[body == 3] = torch.where(coin, _FLIP_CH, _FLIP_CW)[body == 3]
    mid_ops = sorted(set(mid.tolist()) - {_NONE})
    if mid_ops:
        params["mid"] = mid.to(device, non_blocking=True)
    skip = torch.zeros(m, n_body, dtype=torch.bool)
    skipping = (body == 4).nonzero().flatten()
    skip[skipping[:, None], torch.randint(2, n_body, (len(skipping), 3), generator=host)] = True
    params["skip"] = {i: skip[:, i].to(device, non_blocking=True) for i in range(n_body) if skip[:, i].any()}

    def hooks(p: dict[str, Any], plain: bool = False) -> dict[str, Any]:
        perm, mask, ops, skips = p.get("perm"), p.get("mask"), mid_ops, p["skip"]
        if plain and device.type == "cpu":  # look at the slice (no sync on a CPU): only what its images need
            codes = set(p["pre"].tolist())
            perm, mask = (perm if 1 in codes else None), (mask if codes & {2, 3} else None)
            ops = sorted(set(p["mid"].tolist()) - {_NONE}) if "mid" in p else []
            skips = {i: True if s.all() else s for i, s in skips.items() if s.any()}
        return {
            "pre": (lambda x: _apply_pre(x, perm, mask)) if perm is not None or mask is not None else None,
            "mid": (lambda x: _apply_mid(x, p["mid"], ops)) if ops else None,
            "mid_index": MID_INDEX,
            "skip": skips or None,
        }

    return params, hooks


def _apply_pre(x: Tensor, perm: Tensor | None, mask: Tensor | None) -> Tensor:
    """x [m, C, h, w]; perm [m, C] channel order; mask [m, C, h, w] multiplier."""
    if perm is not None:
        x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    return x if mask is None else x * mask


def _apply_mid(x: Tensor, code: Tensor, ops: Sequence[int]) -> Tensor:
    """Apply each sample's body operation; ``ops`` lists the codes present (the others are not computed)."""
    variants = {
        _NEG: lambda: -x,
        _RELU: lambda: F.relu(x),
        _GELU: lambda: F.gelu(x),
        _FLIP_CH: lambda: x.flip(1, 2),
        _FLIP_CW: lambda: x.flip(1, 3),
    }
    out = x
    for op in ops:
        out = torch.where((code == op).view(-1, 1, 1, 1), variants[op](), out)
    return out

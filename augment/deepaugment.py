"""DeepAugment on the fly: every image of a batch stays clean or goes through a randomly perturbed EDSR or CAE.

Each image independently takes the clean / EDSR / CAE path with probabilities (1 - p_edsr - p_cae, p_edsr,
p_cae) -- by default the reference's 1:1:1 mix. The images of one path are split into groups of at most
``images_per_network``; each group gets its own network with freshly drawn weight perturbations (like the
reference re-drawing a network every ~20 images), and activation / latent perturbations are drawn per image. All
groups run in one batched pass (:mod:`augment.grouped`); there is no Python loop over images.

Sizes: EDSR takes the image downscaled x4 (antialiased bicubic) and returns the input resolution; with
``edsr_size`` set it takes the image resized to that short side and its x4 output is resized back (the
reference feeds 128 px short sides), which multiplies its cost by (4 edsr_size / H)^2. The CAE runs at the
input resolution, or with ``cae_size`` set at that short side (bilinear resizes both ways; the reference:
512 px), which scales its cost by (cae_size / H)^2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from augment import perturb_cae, perturb_edsr
from augment.base import (
    RandomAugmentation,
    check_images,
    check_options,
    check_positive,
    check_precision,
    check_probability,
    network_dtype,
    outside_autocast,
)
from augment.grouped import cast_for_network, group_layout, grouped_forward, stack_weights
from augment.images import resized_shape
from augment.networks import CAE, EDSR
from augment.networks.cae import MIN_SIZE as MIN_CAE_SIZE
from augment.networks.edsr import downscale


def load_network(net: nn.Module, path: str | Path, arg: str) -> nn.Module:
    """Load a public-format checkpoint (a plain state dict) into ``net`` with strict key checking; a file that is
    not one gives a one-line ValueError naming ``arg``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{arg} file not found: {path}; pass an existing checkpoint or create one with `python -m augment pretrain`"
        )
    kind = type(net).__name__
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{arg}={path} is not a readable torch checkpoint ({reason[:120]})") from error
    if not isinstance(state, dict):
        raise ValueError(f"{arg}={path} holds a {type(state).__name__}, not a {kind} state dict")
    try:  # strict=False reports the keys instead of raising; the net is discarded if any are off
        keys = net.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that do not fit
        reason = str(error).strip().splitlines()[-1].strip()
        raise ValueError(f"{arg}={path} has {kind} keys of the wrong shape ({reason[:160]})") from None
    if keys.missing_keys or keys.unexpected_keys:
        missing, extra = keys.missing_keys, keys.unexpected_keys
        raise ValueError(
            f"{arg}={path} is not a public-format {kind} checkpoint ({len(missing)} missing keys, e.g. "
            f"{missing[:2]}; {len(extra)} unexpected, e.g. {extra[:2]}); check that edsr_weights and "
            "cae_weights are not swapped"
        )
    return net.requires_grad_(False).eval()


def check_route_probabilities(p_edsr: float, p_cae: float) -> tuple[float, float]:
    """(p_edsr, p_cae) as floats, or a one-line ValueError unless both are probabilities summing to <= 1."""
    p_edsr, p_cae = check_probability(p_edsr, "p_edsr"), check_probability(p_cae, "p_cae")
    if p_edsr + p_cae > 1 + 1e-9:
        raise ValueError(f"p_edsr + p_cae must be <= 1, got {p_edsr} + {p_cae}")
    return p_edsr, p_cae


class DeepAugment(RandomAugmentation):
    """Batched, per-sample DeepAugment (EDSR + CAE) on float images [B, 3, H, W] in [0, 1].

    Returns the same shape, dtype and device, values clamped to [0, 1]; H and W must be divisible by 4. Runs
    without autograd and outside any autocast (``precision`` decides). The networks are frozen submodules of
    this module (requires_grad=False), never part of a classifier.

    Args:
        edsr_weights: EDSR-baseline x4 checkpoint (public ``edsr_baseline_x4.pt`` format); needed if p_edsr > 0.
        cae_weights: CAE checkpoint (public ``model_final.state`` format); needed if p_cae > 0.
        p_edsr, p_cae: probability that an image goes through EDSR / CAE (clean otherwise).
        images_per_network: largest group served by one perturbed network (reference: ~20 on average).
        edsr_size: short side of EDSR's input; None = a quarter of the input's (EDSR then returns the input
            resolution); otherwise the x4 output is resized to the input resolution (antialiased).
        cae_size: short side at which the CAE runs (multiple of 4); None = input resolution.
        seed: seed of the generators (see :mod:`augment.base`).
        edsr_weight_options, edsr_weight_draws: EDSR weight options (0-16) and draws per network.
        edsr_pre_options: per-image options after the EDSR head (1 swap, 2 zero, 3 negate, 4 nothing).
        edsr_body_options: per-image options in the EDSR body (1 negate, 2 ReLU/GELU, 3 flip, 4 skip, 5 nothing).
        cae_weight_options: CAE weight options (0-8; the reference draws from 0-7).
        cae_latent_options: per-image latent options (0-8).
        cpu_pass_pixels: on a CPU, at most this many output pixels per network pass (default: one 224 px image);
            larger batches run in sub-batches with the same result, which keeps activations cache-sized and
            below the allocator's fresh-mapping size. Ignored on other devices (one pass).
        precision: arithmetic of the network passes: "fp32", "bf16" (weights are perturbed and per-image
            perturbations drawn in the networks' dtype, then cast), or "auto" = bf16 where it is fast (CUDA with
            bf16, CPUs with AMX or AVX512-BF16) and the networks are float32, their dtype elsewhere (see docs/deepaugment.md).
        An empty option list switches that kind of perturbation off.
    """

    def __init__(
        self,
        edsr_weights: str | None = None,
        cae_weights: str | None = None,
        p_edsr: float = 1 / 3,
        p_cae: float = 1 / 3,
        images_per_network: int = 16,
        edsr_size: int | None = None,
        cae_size: int | None = None,
        seed: int = 0,
        edsr_weight_options: Sequence[int] = perturb_edsr.WEIGHT_OPTIONS,
        edsr_weight_draws: int = perturb_edsr.WEIGHT_DRAWS,
        edsr_pre_options: Sequence[int] = perturb_edsr.PRE_OPTIONS,
        edsr_body_options: Sequence[int] = perturb_edsr.BODY_OPTIONS,
        cae_weight_options: Sequence[int] = perturb_cae.WEIGHT_OPTIONS,
        cae_latent_options: Sequence[int] = perturb_cae.LATENT_OPTIONS,
        cpu_pass_pixels: int = 224 * 224,
        precision: str = "auto",
    ) -> None:
        super().__init__(seed)
        self.p_edsr, self.p_cae = check_route_probabilities(p_edsr, p_cae)
        self.images_per_network = check_positive(images_per_network, "images_per_network")
        self.cpu_pass_pixels = check_positive(cpu_pass_pixels, "cpu_pass_pixels")
        self.precision = check_precision(precision)
        if cae_size is not None and (int(cae_size) < MIN_CAE_SIZE or int(cae_size) % 4):
            raise ValueError(
                f"cae_size must be a multiple of 4 and >= {MIN_CAE_SIZE}, or None; got {cae_size}"
            )
        self.cae_size = None if cae_size is None else int(cae_size)
        if edsr_size is not None and int(edsr_size) < 1:
            raise ValueError(f"edsr_size must be a positive short side in px, or None; got {edsr_size}")
        self.edsr_size = None if edsr_size is None else int(edsr_size)
        self.edsr_weight_options = check_options(edsr_weight_options, range(17), "edsr_weight_options")
        if int(edsr_weight_draws) < 0:
            raise ValueError(f"edsr_weight_draws must be >= 0, got {edsr_weight_draws}")
        self.edsr_weight_draws = int(edsr_weight_draws)
        self.edsr_pre_options = check_options(edsr_pre_options, perturb_edsr.PRE_OPTIONS, "edsr_pre_options")
        self.edsr_body_options = check_options(
            edsr_body_options, perturb_edsr.BODY_OPTIONS, "edsr_body_options"
        )
        self.cae_weight_options = check_options(
            cae_weight_options, perturb_cae.ALL_WEIGHT_OPTIONS, "cae_weight_options"
        )
        self.cae_latent_options = check_options(
            cae_latent_options, perturb_cae.LATENT_OPTIONS, "cae_latent_options"
        )
        self.edsr = self._network(EDSR(), edsr_weights, self.p_edsr, "edsr_weights")
        self.cae = self._network(CAE(), cae_weights, self.p_cae, "cae_weights")

    @staticmethod
    def _network(net: nn.Module, path: str | None, p: float, arg: str) -> nn.Module | None:
        if p == 0:
            return None
        if path is None:
            raise ValueError(
                f"DeepAugment needs {arg} when its probability is > 0: pass a checkpoint path "
                "(public format, or augment.pretrain.ensure_pretrained(...) / `python -m augment pretrain`)"
            )
        return load_network(net, path, arg).to(memory_format=torch.channels_last)

    def extra_repr(self) -> str:
        return (
            f"p_edsr={self.p_edsr:.3f}, p_cae={self.p_cae:.3f}, images_per_network={self.images_per_network}, "
            f"edsr_size={self.edsr_size}, cae_size={self.cae_size}, precision={self.precision}, seed={self.seed}"
        )

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """x: [B, 3, H, W] in [0, 1] -> same shape/dtype/device, each image clean, EDSR- or CAE-perturbed."""
        check_images(x, "DeepAugment", multiple=4)
        if self.p_cae > 0 and self.cae_size is None and min(x.shape[-2:]) < MIN_CAE_SIZE:
            raise ValueError(
                f"the CAE needs images of at least {MIN_CAE_SIZE} px, got {tuple(x.shape[-2:])}; set cae_size "
                "or p_cae=0"
            )
        host, _ = self.generators()
        u = torch.rand(x.shape[0], generator=host, dtype=torch.float64)
        routes = (
            (u < self.p_edsr, self._edsr_path),
            ((u >= self.p_edsr) & (u < self.p_edsr + self.p_cae), self._cae_path),
        )
        out = x.clamp(0, 1)
        with outside_autocast(x):
            for chosen, path in routes:
                index = chosen.nonzero().flatten()
                if len(index):
                    index = index.to(x.device, non_blocking=True)
                    out[index] = path(x[index]).to(x.dtype)
        return out

    def _grouped(
        self,
        net: nn.Module,
        x: Tensor,
        perturb: Callable[[dict[str, Tensor]], dict[str, Tensor]],
        sample: Callable[[int], tuple[Any, Callable]],
        out_pixels: int,
    ) -> Tensor:
        """Run ``net`` on ``x`` [m, ...] (``out_pixels`` output pixels per image) with one perturbed copy per group."""
        m = x.shape[0]
        groups, n = group_layout(m, self.images_per_network)
        if groups * n > m:
            x = x[torch.arange(groups * n, device=x.device) % m]
        base = dict(net.named_parameters())
        weights, in_dims = stack_weights(base, [perturb(base) for _ in range(groups)])
        params, hooks = sample(groups * n)
        x, weights, params = cast_for_network(
            network_dtype(x.device, self.precision, x.dtype), x, weights, params
        )
        params = tree_map(lambda t: t.unflatten(0, (groups, n)), params)
        per_pass = max(1, self.cpu_pass_pixels // out_pixels) if x.device.type == "cpu" else None
        out = grouped_forward(net, weights, in_dims, x.unflatten(0, (groups, n)), params, hooks, per_pass)
        return out.flatten(0, 1)[:m]

    def _edsr_path(self, x: Tensor) -> Tensor:
        net = self.edsr
        dtype = net.head[0].weight.dtype
        size = tuple(x.shape[-2:])
        if self.edsr_size is None:
            lr = downscale(x.to(dtype))
        else:
            shape = resized_shape(*size, self.edsr_size, multiple=1)
            lr = F.interpolate(x.to(dtype), size=shape, mode="bicubic", antialias=True, align_corners=False)
            lr = lr.clamp(0, 1)
        host, dev = self.generators()

        def perturb(base: dict[str, Tensor]) -> dict[str, Tensor]:
            return perturb_edsr.perturb_weights(
                base, self.edsr_weight_options, host, dev, self.edsr_weight_draws
            )

        def sample(m: int) -> tuple[Any, Callable]:
            feats = net.head[0].out_channels
            return perturb_edsr.sample_activations(
                m,
                feats,
                lr.shape[-2:],
                len(net.body),
                self.edsr_pre_options,
                self.edsr_body_options,
                host,
                dev,
                dtype,
            )

        out_pixels = lr.shape[-2] * lr.shape[-1] * net.scale**2
        out = self._grouped(net, lr, perturb, sample, out_pixels).to(dtype)
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", antialias=True, align_corners=False)
        return out.clamp(0, 1)

    def _cae_path(self, x: Tensor) -> Tensor:
        dtype = self.cae.e_conv_3[0].weight.dtype
        size = tuple(x.shape[-2:])
        xc = x.to(dtype)
        if self.cae_size is not None:
            xc = F.interpolate(xc, size=resized_shape(*size, self.cae_size), mode="bilinear", antialias=True)
        host, dev = self.generators()

        def perturb(base: dict[str, Tensor]) -> dict[str, Tensor]:
            return perturb_cae.perturb_weights(base, self.cae_weight_options, host, dev)

        def sample(m: int) -> tuple[Any, Callable]:
            code_size = (xc.shape[-2] // 4, xc.shape[-1] // 4)
            return perturb_cae.sample_latent(m, code_size, self.cae_latent_options, host, dev, dtype)

        out = self._grouped(self.cae, xc, perturb, sample, xc.shape[-2] * xc.shape[-1]).to(dtype)
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out.clamp(0, 1)

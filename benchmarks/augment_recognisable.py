"""Does DeepAugment keep the object recognisable while changing the image?

Loads a model trained on clean images (a `python -m train` checkpoint), augments the benchmark's
val images with EDSR-only, CAE-only, the default mix and Noise2Net, and prints per augmentation the
share of images whose prediction stays the same (target >= 50%) and the mean absolute pixel change
(target >= 0.05). The figures are the last lines. Reference rows, without any perturbation: the x4
bicubic down-and-up round trip (what EDSR's x4 input leaves of the image), and EDSR and CAE with
every perturbation off (what the pretrained networks themselves change).

A row's share depends on which perturbed networks were drawn (one per 16 images: 32 networks per path
for 512 images, and EDSR weight option 15 alone drops a network's share to 4-16%), so every row is
measured with ``repeats`` seeds (other draws on the same images): the mean share, a 95% interval of that
mean (t-interval over the seeds) and the lowest and highest seed. The mix row also gives the share among
the images it sent through a network (its clean third left out): the mix's augmented images.

    python -m benchmarks.augment_recognisable checkpoint=<run>/checkpoints/last.ckpt [images=512]
        [repeats=4] [edsr_size=32] [cae_size=128] [per_option=true] [precision=fp32]
        [cae_latent_options=[1,2,3,4,5,7,8]] [edsr_weight_options=...] [edsr_weights=<file>] [cae_weights=<file>]

``edsr_size`` sets EDSR's input side, ``cae_size`` the CAE's working side and ``precision`` the arithmetic of
the networks and of Noise2Net's 3x3 convs (defaults: a quarter of the image, the image's side, auto);
the five option lists (``edsr_weight_options``, ``edsr_pre_options``, ``edsr_body_options``,
``cae_weight_options``, ``cae_latent_options``; default: all of the reference's) set the perturbed rows' options;
``per_option=true`` adds one row per option, every other perturbation of that network off: per EDSR weight
option (one draw), EDSR activation option, CAE weight option and CAE latent option. ``edsr_weights`` and
``cae_weights`` judge other networks (a longer pretraining, the public checkpoints) than the built-in
pretraining's cached ones.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from omegaconf import OmegaConf

from augment import DeepAugment, Noise2Net, ensure_pretrained, perturb_cae, perturb_edsr
from augment.base import RandomAugmentation
from augment.networks.edsr import downscale
from augment.pretrain import CACHE_SUBDIR
from evaluation.compare.bootstrap import t_half_width
from evaluation.config import compose_config
from evaluation.program import build_data, build_model
from train.data.datamodule import find_split

OPTION_KEYS = (
    "edsr_weight_options",
    "edsr_pre_options",
    "edsr_body_options",
    "cae_weight_options",
    "cae_latent_options",
)
MIX = "DeepAugment mix (1/3 clean)"
NOISE2NET = "Noise2Net (p=1)"


def bicubic_round_trip(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> downscaled x4 as EDSR's input is, upscaled back bicubically, clamped."""
    up = F.interpolate(downscale(x), size=x.shape[-2:], mode="bicubic", align_corners=False)
    return up.clamp(0, 1)


def seed_interval(shares: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean of per-seed shares and the half-width of its Student's t interval (0 for one seed)."""
    values = np.asarray(shares, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(t_half_width(values.std(ddof=1), len(values), level))


def option_list(key: str, text: str) -> tuple[int, ...]:
    """``[1,2,3]`` -> (1, 2, 3); anything but a list of integers stops with one line naming ``key``."""
    value = yaml.safe_load(text)
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise SystemExit(
            f"{key} takes a list of option numbers, e.g. {key}=[1,2,3] ([] for none); got {text!r}"
        )
    return tuple(value)


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]) or not all("=" in a for a in sys.argv[1:]):
        raise SystemExit(__doc__)
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    n = int(args.pop("images", 512))
    repeats = int(args.pop("repeats", 4))
    if repeats < 1:
        raise SystemExit(f"repeats must be >= 1 (seeds per row), got {repeats}")
    sizes = {key: int(args.pop(key)) if key in args else None for key in ("edsr_size", "cae_size")}
    options = {key: option_list(key, args.pop(key)) for key in OPTION_KEYS if key in args}
    per_option = args.pop("per_option", "false").lower() == "true"
    precision = args.pop("precision", "auto")
    weights = {key: args.pop(f"{key}_weights") for key in ("edsr", "cae") if f"{key}_weights" in args}
    conf = OmegaConf.to_object(compose_config([f"{k}={v}" for k, v in args.items()] + ["eval=clean"]))
    data, suite = build_data(conf)
    model = build_model(conf, data.num_classes).eval()
    val = suite.source("val").dataset
    rows = torch.linspace(0, len(val) - 1, min(n, len(val))).long().tolist()
    images = torch.stack([val[i][0] for i in rows])
    if len(weights) < 2:
        built_in = ensure_pretrained(
            find_split(data.root, "train"), data.cache_dir / CACHE_SUBDIR, image_size=images.shape[-1]
        )
        weights = {**built_in, **weights}
    nets = {
        "edsr_weights": str(weights["edsr"]),
        "cae_weights": str(weights["cae"]),
        **sizes,
        **options,
        "precision": precision,
    }
    edsr_off = {"edsr_weight_options": (), "edsr_pre_options": (), "edsr_body_options": ()}
    cae_off = {"cae_weight_options": (), "cae_latent_options": ()}
    # name -> settings of one DeepAugment (the seed added per repeat); None = no network
    augmentations: dict[str, dict | None] = {
        "bicubic x4 down-up": None,
        "EDSR, perturbations off": {**nets, "p_edsr": 1.0, "p_cae": 0.0, **edsr_off},
        "CAE, perturbations off": {**nets, "p_edsr": 0.0, "p_cae": 1.0, **cae_off},
        "EDSR": {**nets, "p_edsr": 1.0, "p_cae": 0.0},
        "CAE": {**nets, "p_edsr": 0.0, "p_cae": 1.0},
        MIX: nets,
    }
    if per_option:  # one option at a time, every other perturbation of that network off
        edsr_only = {**nets, "p_edsr": 1.0, "p_cae": 0.0, **edsr_off}
        cae_only = {**nets, "p_edsr": 0.0, "p_cae": 1.0, **cae_off}
        for network, base, key, choices, extra in (
            ("EDSR", edsr_only, "edsr_weight_options", perturb_edsr.WEIGHT_OPTIONS, {"edsr_weight_draws": 1}),
            ("EDSR", edsr_only, "edsr_pre_options", perturb_edsr.PRE_OPTIONS, {}),
            ("EDSR", edsr_only, "edsr_body_options", perturb_edsr.BODY_OPTIONS, {}),
            ("CAE", cae_only, "cae_weight_options", perturb_cae.WEIGHT_OPTIONS, {}),
            ("CAE", cae_only, "cae_latent_options", perturb_cae.LATENT_OPTIONS, {}),
        ):
            for option in choices:
                augmentations[f"{network} {key.split('_')[1]} option {option}"] = {
                    **base,
                    **extra,
                    key: (option,),
                }

    def build(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
        if name == NOISE2NET:
            return Noise2Net(p=1.0, precision=precision)
        settings = augmentations[name]
        return bicubic_round_trip if settings is None else DeepAugment(**settings)

    with torch.no_grad():
        clean = torch.cat([model.eval_forward(b).argmax(1) for b in images.split(128)])
        print(
            f"{len(images)} val images, {images.shape[-1]} px, model {conf.model.name} from {conf.checkpoint}, "
            f"DeepAugment precision={precision} edsr_size={sizes['edsr_size']} cae_size={sizes['cae_size']}, "
            f"{repeats} seeds per row (mean share kept, its 95% t-interval, lowest-highest seed)"
        )
        for name in [*augmentations, NOISE2NET]:
            shares, routed_shares, changes = [], [], []
            augment = build(name)  # networks loaded once; each repeat restarts its generators from its seed
            for seed in range(repeats):
                if isinstance(augment, RandomAugmentation):
                    augment.reseed(seed)
                out = torch.cat([augment(b) for b in images.split(64)])
                kept = torch.cat([model.eval_forward(b).argmax(1) for b in out.split(128)]) == clean
                shares.append(100 * kept.float().mean().item())
                changes.append((out - images).abs().mean().item())
                if name == MIX:  # the images the mix sent through a network: clean rows leave it bit for bit
                    routed = (out != images).flatten(1).any(1)
                    routed_shares.append(100 * kept[routed].float().mean().item())
            mean, half = seed_interval(shares)
            line = (
                f"{name:<30} prediction kept {mean:5.1f}% ± {half:4.1f} ({min(shares):.1f}-{max(shares):.1f})   "
                f"mean |pixel change| {np.mean(changes):.3f}"
            )
            if name == MIX:
                routed_mean, routed_half = seed_interval(routed_shares)
                line += f"   images sent through a network: kept {routed_mean:5.1f}% ± {routed_half:4.1f}"
            print(line)
        if precision != "fp32":  # what the cheaper arithmetic changes: same seed, same draws, fp32 networks
            for name in ("EDSR", "CAE"):
                runs = []
                for p in (precision, "fp32"):  # one module each: the same seed gives both the same draws
                    aug = DeepAugment(**{**augmentations[name], "precision": p})
                    runs.append(torch.cat([aug(b) for b in images.split(64)]))
                diff = (runs[0] - runs[1]).abs()
                print(
                    f"{name} {precision} vs fp32: mean |difference| {diff.mean().item():.4f}, "
                    f"median {diff.median().item():.4f}"
                )


if __name__ == "__main__":
    main()

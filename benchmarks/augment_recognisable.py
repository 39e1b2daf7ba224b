"""Does DeepAugment keep the object recognisable while changing the image?

Loads a model trained on clean images (a `python -m train` checkpoint), augments the benchmark's
val images with EDSR-only, CAE-only, the default mix and Noise2Net, and prints per augmentation the
share of images whose prediction stays the same (target >= 50%) and the mean absolute pixel change
(target >= 0.05). The figures are the last lines. Reference rows, without any perturbation: the x4
bicubic down-and-up round trip (what EDSR's x4 input leaves of the image), and EDSR and CAE with
every perturbation off (what the pretrained networks themselves change).

    python -m benchmarks.augment_recognisable checkpoint=<run>/checkpoints/last.ckpt [images=512]
        [edsr_size=32] [cae_size=128] [per_option=true] [precision=fp32]

``edsr_size`` sets EDSR's input side, ``cae_size`` the CAE's working side and ``precision`` the arithmetic of
the networks and of Noise2Net's 3x3 convs (defaults: a quarter of the image, the image's side, auto);
``per_option=true`` adds one row per EDSR weight option (one draw, activation options off) and per EDSR
activation option (weight options off).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from augment import DeepAugment, Noise2Net, ensure_pretrained, perturb_edsr
from augment.networks.edsr import downscale
from augment.pretrain import CACHE_SUBDIR
from evaluation.config import compose_config
from evaluation.program import build_data, build_model
from train.data.datamodule import find_split


def bicubic_round_trip(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> downscaled x4 as EDSR's input is, upscaled back bicubically, clamped."""
    up = F.interpolate(downscale(x), size=x.shape[-2:], mode="bicubic", align_corners=False)
    return up.clamp(0, 1)


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]) or not all("=" in a for a in sys.argv[1:]):
        raise SystemExit(__doc__)
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    n = int(args.pop("images", 512))
    sizes = {key: int(args.pop(key)) if key in args else None for key in ("edsr_size", "cae_size")}
    per_option = args.pop("per_option", "false").lower() == "true"
    precision = args.pop("precision", "auto")
    conf = OmegaConf.to_object(compose_config([f"{k}={v}" for k, v in args.items()] + ["eval=clean"]))
    data, suite = build_data(conf)
    model = build_model(conf, data.num_classes).eval()
    val = suite.source("val").dataset
    rows = torch.linspace(0, len(val) - 1, min(n, len(val))).long().tolist()
    images = torch.stack([val[i][0] for i in rows])
    weights = ensure_pretrained(
        find_split(data.root, "train"), data.cache_dir / CACHE_SUBDIR, image_size=images.shape[-1]
    )
    nets = {
        "edsr_weights": str(weights["edsr"]),
        "cae_weights": str(weights["cae"]),
        **sizes,
        "precision": precision,
    }
    edsr_off = {"edsr_weight_options": (), "edsr_pre_options": (), "edsr_body_options": ()}
    augmentations = {
        "bicubic x4 down-up": bicubic_round_trip,
        "EDSR, perturbations off": DeepAugment(**nets, p_edsr=1.0, p_cae=0.0, **edsr_off),
        "CAE, perturbations off": DeepAugment(
            **nets, p_edsr=0.0, p_cae=1.0, cae_weight_options=(), cae_latent_options=()
        ),
        "EDSR": DeepAugment(**nets, p_edsr=1.0, p_cae=0.0),
        "CAE": DeepAugment(**nets, p_edsr=0.0, p_cae=1.0),
        "DeepAugment mix (1/3 clean)": DeepAugment(**nets),
        "Noise2Net (p=1)": Noise2Net(p=1.0, precision=precision),
    }
    if per_option:
        edsr_only = {**nets, "p_edsr": 1.0, "p_cae": 0.0}
        for key, options, extra in (
            ("edsr_weight_options", perturb_edsr.WEIGHT_OPTIONS, {"edsr_weight_draws": 1}),
            ("edsr_pre_options", perturb_edsr.PRE_OPTIONS, {}),
            ("edsr_body_options", perturb_edsr.BODY_OPTIONS, {}),
        ):
            for option in options:
                chosen = {**edsr_only, **edsr_off, **extra, key: (option,)}
                augmentations[f"EDSR {key.split('_')[1]} option {option}"] = DeepAugment(**chosen)
    with torch.no_grad():
        clean = torch.cat([model.eval_forward(b).argmax(1) for b in images.split(128)])
        print(
            f"{len(images)} val images, {images.shape[-1]} px, model {conf.model.name} from {conf.checkpoint}, "
            f"DeepAugment precision={precision} edsr_size={sizes['edsr_size']} cae_size={sizes['cae_size']}"
        )
        for name, augment in augmentations.items():
            out = torch.cat([augment(b) for b in images.split(64)])
            kept = torch.cat([model.eval_forward(b).argmax(1) for b in out.split(128)]) == clean
            change = (out - images).abs().mean().item()
            print(
                f"{name:<30} prediction kept {100 * kept.float().mean().item():5.1f}%   "
                f"mean |pixel change| {change:.3f}"
            )
        if precision != "fp32":  # what the cheaper arithmetic changes: same seed, same draws, fp32 networks
            for name, probs in (("EDSR", (1.0, 0.0)), ("CAE", (0.0, 1.0))):
                runs = []
                for p in (precision, "fp32"):  # one module each: the same seed gives both the same draws
                    aug = DeepAugment(**{**nets, "precision": p}, p_edsr=probs[0], p_cae=probs[1])
                    runs.append(torch.cat([aug(b) for b in images.split(64)]))
                diff = (runs[0] - runs[1]).abs()
                print(
                    f"{name} {precision} vs fp32: mean |difference| {diff.mean().item():.4f}, "
                    f"median {diff.median().item():.4f}"
                )


if __name__ == "__main__":
    main()

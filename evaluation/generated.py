"""ImageNet-C and ImageNet-P generated on the fly from the val images of each evaluation batch.

During training every val image is scored under its own fixed (corruption, severity) pair
(``c_plan``): an unbiased per-epoch mCE estimate at the cost of one extra forward pass per image.
The final evaluation scores the full 15 x 5 grid on a fixed subset (``c_subset``). ImageNet-P
sequences are made for a fixed subset of val images. Every corruption draws from a generator
seeded by (evaluation seed, first image of the group, pair), so every run and every epoch with the
same batch layout sees the same corrupted images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from evaluation import metrics as M
from evaluation.corruptions import COMMON_CORRUPTIONS, NOISE_PERTURBATIONS, c_plan, c_subset, corrupt
from evaluation.corruptions import perturbation_sequence as make_sequence
from evaluation.distributed import gather_objects
from evaluation.scoring import Scores, corruption_scores
from evaluation.suite import C_NAMES

P_TEST = (
    "gaussian_noise",
    "shot_noise",
    "motion_blur",
    "zoom_blur",
    "snow",
    "brightness",
    "translate",
    "rotate",
    "tilt",
    "scale",
)  # ImageNet-P's 10 test perturbations


def image_generator(device: torch.device, seed: int, index: int, salt: int) -> torch.Generator:
    """A generator fixed by (seed, first image index of the group, salt): the same group of images
    gets the same noise every epoch (groups depend on the per-rank batches, so on the world size)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + index * 1009 + salt) % 2**63)


@dataclass
class GeneratedCorruptions:
    """Scores ``imagenet-c-gen`` (and ``imagenet-p`` when ``p_images`` > 0) from val batches.

    Args:
        num_val: number of val images (the plan covers them all).
        seed: evaluation seed (fixed: not the training seed).
        grid_images: images scored under all 75 pairs in the final evaluation.
        p_images: images turned into ImageNet-P sequences (per evaluation).
        score_c: score ImageNet-C (``imagenet-c-gen``).
    """

    num_val: int
    seed: int = 0
    grid_images: int = 100
    p_images: int = 0
    score_c: bool = True
    records: dict[str, list[Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plan = c_plan(self.num_val, self.seed)
        self.grid = c_subset(self.num_val, self.grid_images, self.seed)
        self.p_subset = c_subset(self.num_val, self.p_images, self.seed + 1)

    def reset(self) -> None:
        sequences = [
            f"p_{kind}/{name}" for name in P_TEST for kind in ("preds", "rank")
        ]  # T differs per name
        self.records = {k: [] for k in ("c_wrong", "c_corruption", "c_severity", *sequences)}

    @torch.no_grad()
    def collect(
        self, forward, images: Tensor, target: Tensor, index: Tensor, final: bool, sequences: bool = True
    ) -> None:
        """Corrupt this val batch ([B,3,H,W] in [0,1], dataset indices ``index``) and record predictions
        (ImageNet-P's only with ``sequences``)."""
        if self.score_c:
            self.collect_c(forward, images, target, index, final)
        chosen = torch.isin(index.cpu(), self.p_subset)
        if sequences and chosen.any():
            self.collect_p(forward, images[chosen.to(images.device)], index[chosen.to(index.device)])

    def collect_c(self, forward, images: Tensor, target: Tensor, index: Tensor, final: bool) -> None:
        idx = index.cpu()
        if final:  # every pair for the grid subset
            keep = torch.isin(idx, self.grid)
            pairs = [(c, s) for c in range(len(COMMON_CORRUPTIONS)) for s in range(1, 6)]
            jobs = [(keep, c, s) for c, s in pairs] if keep.any() else []
        else:  # each image under its own planned pair
            corruption, severity = self.plan[0][idx], self.plan[1][idx]
            jobs = [
                ((corruption == c) & (severity == s), c, s)
                for c, s in torch.stack([corruption, severity], 1).unique(dim=0).tolist()
            ]
        pending: list[tuple[Tensor, Tensor, int, int]] = []  # corrupted images, their rows, pair
        pending_images = 0
        for mask, c, s in jobs:
            rows = mask.nonzero().squeeze(1)
            generator = image_generator(images.device, self.seed, int(idx[rows[0]]), c * 8 + s)
            corrupted = corrupt(images[rows.to(images.device)], COMMON_CORRUPTIONS[c], s, generator)
            pending.append((corrupted, rows, c, s))
            pending_images += len(rows)
            if pending_images >= len(images):
                self._score_corrupted(forward, pending, target)
                pending, pending_images = [], 0
        if pending:
            self._score_corrupted(forward, pending, target)

    def _score_corrupted(
        self, forward, pending: list[tuple[Tensor, Tensor, int, int]], target: Tensor
    ) -> None:
        """One forward pass over the corrupted images of several (corruption, severity) groups
        (a group often holds one image: one pass each would run the model at batch size 1)."""
        corrupted, rows, corruptions, severities = zip(*pending, strict=True)
        rows = torch.cat(rows)
        wrong = (forward(torch.cat(corrupted)).argmax(1) != target[rows.to(target.device)]).cpu()
        sizes = torch.tensor([len(c) for c in corrupted])
        names = torch.tensor([C_NAMES.index(COMMON_CORRUPTIONS[c]) for c in corruptions])
        self.records["c_wrong"].append(wrong)
        self.records["c_corruption"].append(names.repeat_interleave(sizes))
        self.records["c_severity"].append(torch.tensor(severities).repeat_interleave(sizes))

    def collect_p(self, forward, images: Tensor, index: Tensor) -> None:
        for p, name in enumerate(P_TEST):
            generator = image_generator(images.device, self.seed, int(index[0]), 1000 + p)
            frames = make_sequence(images, name, generator)  # [B, T, 3, H, W]
            b, t = frames.shape[:2]
            logits = forward(frames.flatten(0, 1)).float().view(b, t, -1)
            self.records[f"p_preds/{name}"].append(logits.argmax(-1).cpu())
            self.records[f"p_rank/{name}"].append(M.topk_ranking(logits.flatten(0, 1).cpu(), 5).view(b, t, 5))

    def compute(
        self, clean_error: float | None, reference: M.CorruptionReference | None
    ) -> dict[str, Scores]:
        """Gathered scores per variant name: ``imagenet-c-gen`` and ``imagenet-p``."""
        out: dict[str, Scores] = {}
        cat = {}  # every rank joins every gather, also one whose shard produced no records
        for key, parts in self.records.items():
            gathered = [t for rank_parts in gather_objects(parts) for t in rank_parts]
            cat[key] = torch.cat(gathered) if gathered else None
        if self.score_c and cat["c_wrong"] is not None and len(cat["c_wrong"]):
            out["imagenet-c-gen"] = corruption_scores(
                cat["c_wrong"], cat["c_corruption"], cat["c_severity"], clean_error, reference
            )
        scores: Scores = {}
        for name in P_TEST:
            preds, ranks = cat[f"p_preds/{name}"], cat[f"p_rank/{name}"]
            if preds is None or len(preds) == 0:
                continue
            noise = name in NOISE_PERTURBATIONS
            scores[f"{name}/fp"] = M.flip_probability(preds, noise)
            scores[f"{name}/t5d"] = M.top5_distance(ranks, noise)
            scores["n"] = float(len(preds))
        if scores:
            for metric in ("fp", "t5d"):  # mean over the perturbations scored
                values = [v for k, v in scores.items() if k.endswith(f"/{metric}")]
                scores[metric] = sum(values) / len(values)
            out["imagenet-p"] = scores
        return out

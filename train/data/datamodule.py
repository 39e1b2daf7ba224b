"""LightningDataModule over an ImageNet-layout folder (real ImageNet or the embedded benchmark)."""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path

import lightning as L
import torch
from timm.data import ImageNetInfo
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from train.config import DataConfig
from train.data.benchmark import ensure_benchmark
from train.data.folder import DataLayoutError, ImageFolderDataset, Sample, scan_folder
from train.data.transforms import train_transform

log = logging.getLogger(__name__)

VAL_SPLIT_NAMES = ("val", "valid", "validation", "eval", "evaluation")  # the names timm looks for


def resolve_root(cfg: DataConfig, cache_dir: Path) -> Path:
    """The dataset root on disk; the embedded benchmark is generated into ``cache_dir`` on first use."""
    if cfg.name == "benchmark" and cfg.root is None:
        return ensure_benchmark(root=cache_dir, seed=cfg.seed)
    if cfg.root is None:
        raise DataLayoutError(f"data={cfg.name} needs data.root=<folder with train/<wnid>/ and val/<wnid>/>")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataLayoutError(
            f"data.root={root} does not exist; expected <root>/train/<wnid>/ and <root>/val/<wnid>/"
        )
    return root


def load_classes(cfg: DataConfig, root: Path) -> list[str]:
    """The class list (wnids) whose positions are the class indices of every label file."""
    if cfg.classes:
        path = Path(cfg.classes)
        if not path.is_file():
            raise FileNotFoundError(
                f"data.classes={path} does not exist; give a text file with one wnid per line"
            )
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if cfg.name == "benchmark":
        return (root / "classes.txt").read_text().split()
    return list(ImageNetInfo("imagenet-1k").label_names())


def find_split(root: Path, split: str) -> Path:
    """``<root>/<split>``; for the validation split also timm's alternative folder names."""
    names = VAL_SPLIT_NAMES if split in VAL_SPLIT_NAMES else (split,)
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataLayoutError(
        f"{root} has no {split} split (looked for {', '.join(names)}); "
        f"expected the layout <root>/{split}/<wnid>/<image>"
    )


def split_minival(samples: list[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of every class (at least one image when > 0), evenly spread over its
    naturally sorted files: deterministic, identical on every rank and run. Returns (train, minival)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"data.minival_fraction={fraction} is out of range; use a value in [0, 1)")
    by_class: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        by_class.setdefault(sample.target, []).append(i)
    held: set[int] = set()
    for members in by_class.values():
        count = min(len(members) - 1, max(1, round(fraction * len(members)))) if fraction > 0 else 0
        step = len(members) / max(count, 1)
        held.update(members[int(j * step)] for j in range(count))
    return [s for i, s in enumerate(samples) if i not in held], [
        s for i, s in enumerate(samples) if i in held
    ]


class UnpaddedShardSampler(Sampler[int]):
    """A contiguous, unpadded slice of ``range(n)`` per rank: every image is scored exactly once."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.start = n * rank // world_size
        self.stop = n * (rank + 1) // world_size

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class ImageNetDataModule(L.LightningDataModule):
    """Train split for fitting; evaluation sources are built by the evaluation package from ``root``.

    Args:
        cfg: the ``data`` config.
        cache_dir: where the embedded benchmark is generated and cached.
        seed: training seed; the train sampler is seeded from it under DDP.
    """

    def __init__(self, cfg: DataConfig, cache_dir: Path, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.seed = seed
        self.root = resolve_root(cfg, self.cache_dir)
        self.classes = load_classes(cfg, self.root)
        self.train_set: ImageFolderDataset | None = None
        self.eval_sources: list = []  # evaluation.suite.EvalSource, set by the program that evaluates
        self.max_eval_images: int | None = None  # per-epoch cap; validate() outside fit scores all

    @cached_property
    def split(self) -> tuple[list[Sample], list[Sample]]:
        """(train samples, minival samples) of the train folder, scanned on first use."""
        return split_minival(
            scan_folder(find_split(self.root, "train"), self.classes), self.cfg.minival_fraction
        )

    @property
    def train_samples(self) -> list[Sample]:
        return self.split[0]

    @property
    def minival_samples(self) -> list[Sample]:
        return self.split[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = ImageFolderDataset(self.train_samples, train_transform(self.cfg))

    def loader(
        self,
        dataset,
        batch_size: int,
        sampler: Sampler | None,
        drop_last: bool = False,
        shuffle: bool = False,
    ) -> DataLoader:
        """A DataLoader with this config's workers; pinned memory when CUDA is present."""
        workers = self.cfg.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            multiprocessing_context="fork" if workers and os.name == "posix" else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "setup('fit') builds the train set"
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(
                self.train_set,
                num_replicas=trainer.world_size,
                rank=trainer.global_rank,
                shuffle=True,
                seed=self.seed,
                drop_last=True,
            )
            return self.loader(self.train_set, self.cfg.batch_size, sampler, drop_last=True)
        return self.loader(self.train_set, self.cfg.batch_size, None, drop_last=True, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per evaluation source, capped to ``max_eval_images`` during fit."""
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        cap = self.max_eval_images if fitting else None
        return [self.eval_loader(source.capped(cap)) for source in self.eval_sources]

    def eval_loader(self, dataset) -> DataLoader:
        """Sequential, unpadded per-rank loader (exact metrics under DDP)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        return self.loader(dataset, batch, UnpaddedShardSampler(len(dataset), rank, world))

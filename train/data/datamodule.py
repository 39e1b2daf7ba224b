"""LightningDataModule over an ImageNet-layout folder (real ImageNet or the embedded benchmark)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from timm.data import ImageNetInfo
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from train.config import DataConfig
from train.data.benchmark import ensure_benchmark
from train.data.folder import DataLayoutError, ImageFolderDataset, Sample, scan_folder
from train.data.shards import EpochLoader, ShardSets, ShardStream
from train.data.transforms import train_transform

if TYPE_CHECKING:
    from train.data.dali import DaliTrainLoader

log = logging.getLogger(__name__)

VAL_SPLIT_NAMES = ("val", "valid", "validation", "eval", "evaluation")  # the names timm looks for
BACKENDS = ("torchvision", "dali")
DALI_INSTALL = "pip install nvidia-dali-cuda130"


def resolve_root(cfg: DataConfig, cache_dir: Path) -> Path:
    """The dataset root on disk; the embedded benchmark is generated into ``cache_dir`` on first use."""
    if cfg.name == "benchmark" and cfg.root is None:
        return ensure_benchmark(root=cache_dir, seed=cfg.seed)
    if cfg.root is None and cfg.shards:  # the shard writer copies the label files there
        return Path(cfg.shards).expanduser()
    if cfg.root is None:
        raise DataLayoutError(
            f"data={cfg.name} needs data.root=<folder with train/<wnid>/ and val/<wnid>/> "
            f"or data.shards=<folder written by python -m train.shards>"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataLayoutError(
            f"data.root={root} does not exist; expected <root>/train/<wnid>/ and <root>/val/<wnid>/"
        )
    return root


def read_wnids(path: str, key: str) -> list[str]:
    """The wnids of a list file (one per line) named by the config ``key``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}={path} does not exist; give a text file with one wnid per line")
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def label_file_classes(cfg: DataConfig, root: Path) -> list[str]:
    """The class list (wnids) that label files index -- ReaL's ``real.json`` entries, ImageNetV2's folder
    numbers: ``data.label_classes``, else the root's ``classes.txt`` (the benchmark's, or the one the shard
    writer copies with the label files), else ImageNet-1k's sorted wnids -- whatever ``data.classes`` says,
    so a model of another class order or a class subset still reads the releases' labels right."""
    if cfg.label_classes:
        return read_wnids(cfg.label_classes, "data.label_classes")
    if (root / "classes.txt").is_file():
        return read_wnids(str(root / "classes.txt"), "the root's classes.txt")
    return list(ImageNetInfo("imagenet-1k").label_names())


def load_classes(cfg: DataConfig, root: Path) -> list[str]:
    """The model's class list (wnids): class index i is ``classes[i]``. ``data.classes`` if given, else
    :func:`label_file_classes`."""
    if cfg.classes:
        return read_wnids(cfg.classes, "data.classes")
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


def extra_train_samples(folders: list[str], classes: list[str], minival: list[Sample]) -> list[Sample]:
    """The images of ``folders`` (``<folder>/<wnid>/<file>``, e.g. ``python -m augment generate``'s ``EDSR/`` and
    ``CAE/``) labelled by their wnid, less the copies of minival images (same wnid and file name): a perturbed
    copy of a held-out image in training would leak it into the minival score."""
    held = {(s.path.parent.name, s.path.name) for s in minival}
    samples: list[Sample] = []
    for folder in folders:
        found = scan_folder(Path(folder).expanduser(), classes)
        kept = [s for s in found if (s.path.parent.name, s.path.name) not in held]
        log.info(
            "data.extra_train: %d images from %s (%d copies of minival images left out)",
            len(kept),
            folder,
            len(found) - len(kept),
        )
        samples += kept
    return samples


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
        if cfg.backend not in BACKENDS:
            raise ValueError(f"data.backend={cfg.backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        if cfg.backend == "dali" and cfg.shards:
            raise ValueError(
                "data.backend=dali reads image folders; unset data.shards or use backend=torchvision"
            )
        if cfg.extra_train and cfg.shards:
            raise ValueError(
                "data.extra_train adds image folders to a folder-read train split; unset data.shards, or write "
                "the extra folders into the shards' train split"
            )
        self.root = resolve_root(cfg, self.cache_dir)
        self.classes = load_classes(cfg, self.root)
        self.label_classes = label_file_classes(cfg, self.root)  # what label files index
        self.shards = ShardSets(cfg.shards) if cfg.shards else None
        self.dropped_samples = 0  # training samples an epoch does not use (equal steps on every rank)
        self.train_set: ImageFolderDataset | None = None
        self.eval_sources: list = []  # evaluation.suite.EvalSource, set by the program that evaluates
        self.max_eval_images: int | None = None  # per-epoch cap; validate() outside fit scores all ...
        self.cap_validate = False  # ... unless this is set (python -m evaluation eval.max_images=N)

    @cached_property
    def split(self) -> tuple[list[Sample], list[Sample]]:
        """(train samples, minival samples) of the train folder (or shard set), scanned on first use."""
        if self.shards is not None:
            self.shards.check_classes("train", self.classes)
            samples = self.shards.scan(self.shards.folder("train"), self.classes)
        else:
            samples = scan_folder(find_split(self.root, "train"), self.classes)
        train, minival = split_minival(samples, self.cfg.minival_fraction)
        return train + extra_train_samples(list(self.cfg.extra_train), self.classes, minival), minival

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
        cls: type[DataLoader] = DataLoader,
        **kwargs,
    ) -> DataLoader:
        """A DataLoader (or ``cls``) with this config's workers; pinned memory when CUDA is present."""
        workers = self.cfg.num_workers
        return cls(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
            multiprocessing_context="fork" if workers and os.name == "posix" else None,
            **kwargs,
        )

    def train_dataloader(self) -> Iterable[tuple[torch.Tensor, ...]]:
        """Batches ``(images [B,3,H,W] in [0,1], targets [B], indices [B], bad [B])``, the same number
        on every rank, from the configured backend (torchvision, DALI, or shards)."""
        assert self.train_set is not None, "setup('fit') builds the train set"
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        loader = None
        if self.shards is not None:
            stream = ShardStream(
                self.train_samples, self.train_set.transform, self.cfg.batch_size, rank, world, self.seed
            )
            epoch = (lambda: trainer.current_epoch) if trainer is not None else (lambda: 0)
            loader = self.loader(
                stream, self.cfg.batch_size, None, drop_last=True, cls=EpochLoader, epoch=epoch
            )
            self.dropped_samples = stream.dropped
        elif self.cfg.backend == "dali":
            loader = self.dali_loader(rank, world)
        if loader is None:  # torchvision: full batches only, the same number on every rank
            n, batch = len(self.train_set), self.cfg.batch_size
            self.dropped_samples = n - world * (n // world // batch) * batch
            if world > 1:
                sampler = DistributedSampler(
                    self.train_set,
                    num_replicas=world,
                    rank=rank,
                    shuffle=True,
                    seed=self.seed,
                    drop_last=True,
                )
                loader = self.loader(self.train_set, batch, sampler, drop_last=True)
            else:
                loader = self.loader(self.train_set, batch, None, drop_last=True, shuffle=True)
        limit = trainer.limit_train_batches if trainer is not None else 1.0
        log.info(
            "training: %d steps per epoch per rank%s, %d samples dropped per epoch",
            len(loader),
            "" if limit == 1.0 else f" (trainer.limit_train_batches={limit} runs fewer)",
            self.dropped_samples,
        )
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics(
                {"data/dropped_samples": float(self.dropped_samples)}, step=trainer.global_step
            )  # a resumed run's step: W&B drops a step that goes backwards
        return loader

    def dali_loader(self, rank: int, world: int) -> DaliTrainLoader | None:
        """The DALI loader (GPU decoding when CUDA is present); None, with one warning, without DALI."""
        try:
            from train.data.dali import DaliTrainLoader
        except ImportError as err:
            log.warning(
                "data.backend=dali: DALI is not installed (%s); using torchvision. Fix: %s", err, DALI_INSTALL
            )
            return None
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        loader = DaliTrainLoader(
            self.train_samples,
            self.cfg,
            self.cfg.batch_size,
            rank,
            world,
            self.seed,
            device_id=device.index if device.type == "cuda" else None,
        )
        self.dropped_samples = loader.dropped
        return loader

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per evaluation source, capped to ``max_eval_images`` during fit (and in validate() with
        ``cap_validate``)."""
        fitting = self.trainer is not None and self.trainer.state.fn == "fit"
        cap = self.max_eval_images if fitting or self.cap_validate else None
        return [self.eval_loader(source.capped(cap)) for source in self.eval_sources]

    def eval_loader(self, dataset) -> DataLoader:
        """Sequential, unpadded per-rank loader (exact metrics under DDP)."""
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        batch = self.cfg.eval_batch_size or 2 * self.cfg.batch_size
        return self.loader(dataset, batch, UnpaddedShardSampler(len(dataset), rank, world))

"""NVIDIA DALI training loader: JPEG decoding and RandomResizedCrop/flip on the GPU (or CPU).

Reads the same (path, label) sample list as the torchvision path. The reader's label is the
sample's position in that list, so batches carry the same ``(image, target, index, bad)`` items
as :class:`train.data.folder.ImageFolderDataset`: images float [B,3,H,W] in [0,1] (not
normalised), targets int64 [B], indices int64 [B], bad int64 [B] (always -1: DALI stops with an
error on an unreadable file instead of replacing it). Importing this module needs DALI
(``pip install nvidia-dali-cuda130``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from train.config import DataConfig
from train.data.folder import Sample

READER = "reader"
INTERPOLATION = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}


def check_supported(cfg: DataConfig) -> None:
    """One-line errors for training options the DALI pipeline does not implement."""
    if cfg.interpolation not in INTERPOLATION:
        raise ValueError(
            f"data.backend=dali supports data.interpolation in {sorted(INTERPOLATION)}, "
            f"not {cfg.interpolation!r}; change it or use data.backend=torchvision"
        )
    for key in ("color_jitter", "auto_augment"):
        if getattr(cfg, key):
            raise ValueError(f"data.backend=dali does not implement data.{key}; use data.backend=torchvision")


@pipeline_def
def train_pipeline(
    files: list[str],
    labels: list[int],
    shard_id: int,
    num_shards: int,
    size: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    hflip: float,
    interpolation: str,
    gpu: bool,
):
    """File reader -> decode only a random crop (``mixed``: on the GPU) -> resize -> flip -> [0,1] CHW."""
    jpegs, labels = fn.readers.file(
        files=files,
        labels=labels,
        shard_id=shard_id,
        num_shards=num_shards,
        shuffle_after_epoch=True,  # a global reshuffle per epoch, the same on every shard
        name=READER,
    )
    images = fn.decoders.image_random_crop(
        jpegs,
        device="mixed" if gpu else "cpu",
        output_type=types.RGB,
        random_area=list(scale),
        random_aspect_ratio=list(ratio),
    )
    images = fn.resize(images, resize_x=size, resize_y=size, interp_type=INTERPOLATION[interpolation])
    return (
        fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[0.0, 0.0, 0.0],
            std=[255.0, 255.0, 255.0],
            mirror=fn.random.coin_flip(probability=hflip),
        ),
        labels,
    )


class DaliTrainLoader:
    """One rank's training batches from DALI; ``len()`` is the same on every rank.

    The sample list is shuffled once with ``seed`` (so every rank's shard mixes all classes) and
    cut to a multiple of ``world_size``; each rank then reads ``len(samples) // world_size``
    images per epoch and runs ``that // batch_size`` steps. ``dropped`` counts the images an
    epoch does not use (the cut plus each rank's partial last batch).

    Args:
        samples: the training samples (path, class index).
        cfg: the ``data`` config (image size, crop scale/ratio, flip, interpolation, threads).
        batch_size: per rank.
        rank, world_size: this process's shard.
        seed: run seed; crops and flips use ``seed + rank``.
        device_id: CUDA device for decoding (``mixed``) and augmentation; None runs on the CPU.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        cfg: DataConfig,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device_id: int | None = None,
    ) -> None:
        check_supported(cfg)
        per_rank = len(samples) // world_size
        if per_rank < batch_size:
            raise ValueError(
                f"{len(samples)} training images give {per_rank} per rank, fewer than data.batch_size="
                f"{batch_size}; lower data.batch_size"
            )
        order = np.random.default_rng(seed).permutation(len(samples))[: per_rank * world_size]
        self.targets = torch.tensor([s.target for s in samples], dtype=torch.long)
        self.steps = per_rank // batch_size
        self.dropped = len(samples) - self.steps * batch_size * world_size
        pipe = train_pipeline(
            files=[str(samples[i].path) for i in order],
            labels=order.tolist(),
            shard_id=rank,
            num_shards=world_size,
            size=cfg.image_size,
            scale=cfg.scale,
            ratio=cfg.ratio,
            hflip=cfg.hflip,
            interpolation=cfg.interpolation,
            gpu=device_id is not None,
            batch_size=batch_size,
            num_threads=max(1, cfg.num_workers),
            device_id=device_id,
            seed=seed + rank,
        )
        pipe.build()
        self.iterator = DALIGenericIterator(
            [pipe],
            ["images", "index"],
            reader_name=READER,
            last_batch_policy=LastBatchPolicy.DROP,
            auto_reset=True,
        )

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        for (batch,) in self.iterator:
            index = batch["index"].view(-1).long().cpu()
            images = batch["images"]
            yield images, self.targets[index].to(images.device), index, torch.full_like(index, -1)

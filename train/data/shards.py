"""Reading WebDataset shards written by ``python -m train.shards``.

A shard folder holds, per image set (``train``, ``val``, ``sketch``, ...), tar files
``<set>-%06d.tar`` with the original image bytes, and a manifest ``<set>.shards.json`` listing
every member (relative path, class index, byte offset and size) in the source folder's order.

Two readers:

* evaluation (exact, map-style): :meth:`ShardSets.scan` returns the same samples as
  :func:`train.data.folder.scan_folder` on the source folder, each pointing at its tar member,
  so :class:`ImageFolderDataset` and the unpadded DDP sampler score every image once;
* training (streaming): :class:`ShardStream`, a WebDataset pipeline over the shards in a seeded
  per-epoch order, cut so that every rank yields the same number of full batches.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from train.data.folder import (
    IMAGE_EXTENSIONS,
    DataLayoutError,
    Sample,
    TarMember,
    folder_labels,
    natural_key,
)

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".shards.json"
FORMAT = "sigrob-shards-1"
IMAGE_KEYS = frozenset(ext[1:] for ext in IMAGE_EXTENSIONS) | {"jpg"}
WRITE_HINT = "write them with `python -m train.shards <data root> <shard folder>`"


class ShardSets:
    """The image sets of one shard folder; ``<folder>/<set>`` is the (virtual) folder of a set."""

    def __init__(self, folder: Path | str) -> None:
        self.root = Path(folder).expanduser()
        if not self.root.is_dir():
            raise DataLayoutError(f"data.shards={self.root} does not exist; {WRITE_HINT}")
        self.names = sorted(p.name[: -len(MANIFEST_SUFFIX)] for p in self.root.glob(f"*{MANIFEST_SUFFIX}"))
        if not self.names:
            raise DataLayoutError(
                f"data.shards={self.root} has no shard manifest (<set>{MANIFEST_SUFFIX}); {WRITE_HINT}"
            )

    def folder(self, name: str) -> Path:
        return self.root / name

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` is the virtual folder of one of these sets."""
        return Path(folder).parent == self.root and Path(folder).name in self.names

    @cache  # noqa: B019 (one instance per data module; manifests are read once)
    def manifest(self, name: str) -> dict[str, Any]:
        path = self.root / f"{name}{MANIFEST_SUFFIX}"
        if not path.is_file():
            raise DataLayoutError(f"{path} not found (sets here: {', '.join(self.names)}); {WRITE_HINT}")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise DataLayoutError(f"{path} is not a {FORMAT} manifest; {WRITE_HINT}")
        return manifest

    def check_classes(self, name: str, classes: Sequence[str]) -> None:
        """The set's class indices were written for ``classes``; a one-line error otherwise."""
        written = self.manifest(name)["classes"]
        if written != list(classes):
            raise DataLayoutError(
                f"{self.root / name}{MANIFEST_SUFFIX} was written for {len(written)} classes but the run "
                f"uses {len(classes)} (or another order); set data.classes to the list the shards were "
                f"written with, or rewrite them with `python -m train.shards ... --classes <file>`"
            )

    def class_folders(self, name: str) -> list[str]:
        """The class folder names of set ``name``'s source folder, naturally sorted."""
        return sorted({m[2].split("/", 1)[0] for m in self.manifest(name)["members"]}, key=natural_key)

    def scan(
        self,
        folder: Path,
        classes: Sequence[str],
        layout: str = "wnid",
        numbered: Sequence[str] | None = None,
    ) -> list[Sample]:
        """Like :func:`scan_folder` on the set's source folder: same order, same labels."""
        folder = Path(folder)
        manifest = self.manifest(folder.name)
        members = manifest["members"]  # [shard index, key, relative path, class index, offset, size]
        labels = folder_labels(folder, self.class_folders(folder.name), classes, layout, numbered)
        tars = [str(self.root / s["file"]) for s in manifest["shards"]]
        return [
            Sample(folder / rel, labels[rel.split("/", 1)[0]], TarMember(tars[shard], key, offset, size))
            for shard, key, rel, _, offset, size in members
        ]


class ShardStream(IterableDataset):
    """Training samples streamed from their shards, ``(image, target, index, bad)`` like
    :class:`ImageFolderDataset` (``index`` into ``samples``; ``bad`` the index of an unreadable
    image replaced by the previous readable one, else -1).

    Every epoch the shards are put in a seeded order (the same on every rank) and the training
    members of that concatenation are cut into ``world_size`` equal runs of ``steps * batch_size``
    samples, ``steps = (len(samples) // world_size) // batch_size``; a rank's run is split among
    its loader workers in whole batches and shuffled within a buffer. Members not in ``samples``
    (minival) are skipped; ``dropped`` counts the training samples an epoch does not use.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        buffer: int = 1000,
    ) -> None:
        if any(s.member is None for s in samples):
            raise ValueError("ShardStream reads shard members; give samples from ShardSets.scan")
        self.samples = list(samples)
        self.transform = transform
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.buffer, self.epoch = seed, buffer, 0
        self.position = {(s.member.tar, s.member.key): i for i, s in enumerate(self.samples)}
        counts = Counter(s.member.tar for s in self.samples)
        self.tars = sorted(counts)
        self.counts = np.array([counts[t] for t in self.tars])
        self.steps = (len(self.samples) // world_size) // batch_size
        if self.steps == 0:
            raise ValueError(
                f"{len(self.samples)} training images over {world_size} ranks make no batch of "
                f"data.batch_size={batch_size}; lower data.batch_size"
            )
        self.dropped = len(self.samples) - self.steps * batch_size * world_size

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def plan(self, epoch: int, worker: int, workers: int) -> list[tuple[str, int, int]]:
        """(shard, first, stop) positions among a shard's training members, for one worker."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.tars))
        ends = np.cumsum(self.counts[order])
        starts = ends - self.counts[order]
        per_rank = self.steps * self.batch_size
        first_batch = self.steps * worker // workers
        stop_batch = self.steps * (worker + 1) // workers
        lo = self.rank * per_rank + first_batch * self.batch_size
        hi = self.rank * per_rank + stop_batch * self.batch_size
        return [
            (self.tars[k], int(max(lo, s) - s), int(min(hi, e) - s))
            for k, s, e in zip(order, starts, ends, strict=True)
            if s < hi and e > lo
        ]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, int, int]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan(self.epoch, worker, workers)
        rng = random.Random(f"{self.seed}-{self.epoch}-{self.rank}-{worker}")
        pipeline = wds.DataPipeline(
            wds.SimpleShardList([tar for tar, _, _ in plan]),
            wds.tarfile_to_samples(),
            lambda items: self.select(items, {tar: (lo, hi) for tar, lo, hi in plan}),
            wds.shuffle(self.buffer, initial=min(self.buffer, 100), rng=rng),
        )
        return self.decode(pipeline)

    def select(
        self, items: Iterable[dict], bounds: dict[str, tuple[int, int]]
    ) -> Iterator[tuple[int, bytes]]:
        """(sample index, image bytes) of the training members inside each shard's bounds."""
        seen: Counter[str] = Counter()
        for item in items:
            index = self.position.get((item["__url__"], item["__key__"]))
            if index is None:
                continue
            lo, hi = bounds[item["__url__"]]
            if lo <= seen[item["__url__"]] < hi:
                yield index, next(item[k] for k in item if k in IMAGE_KEYS)
            seen[item["__url__"]] += 1

    def decode(self, items: Iterable[tuple[int, bytes]]) -> Iterator[tuple[torch.Tensor, int, int, int]]:
        """Decoded, transformed samples; each unreadable one is replaced so the count stays fixed."""
        last, pending = None, []
        for index, data in items:
            try:
                with Image.open(BytesIO(data)) as image:
                    current = (self.transform(image.convert("RGB")), self.samples[index].target, index)
            except (OSError, SyntaxError, ValueError) as err:
                log.debug("unreadable image %s: %s", self.samples[index].path, err)
                if last is None:
                    pending.append(index)
                else:
                    yield (*last, index)
                continue
            for bad in [*pending, -1]:
                yield (*current, bad)
            last, pending = current, []
        if pending:
            raise DataLayoutError(f"no readable image among {len(pending)} shard members")


class EpochLoader(DataLoader):
    """A DataLoader over a :class:`ShardStream` that sets the stream's epoch before each pass
    (from ``epoch()``, e.g. the trainer's current epoch, so a resumed run reads the same order)."""

    def __init__(self, dataset: ShardStream, epoch: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.epoch = epoch

    def __iter__(self):
        self.dataset.epoch = self.epoch()
        return super().__iter__()

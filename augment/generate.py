"""Offline DeepAugment: write EDSR- and CAE-perturbed copies of an ImageNet-layout split, like the reference.

For every ``<data_root>/<split>/<wnid>/<file>`` this writes ``<out>/EDSR/<wnid>/<file>`` and
``<out>/CAE/<wnid>/<file>`` (JPEG quality 95 for JPEG names). Images are resized to short side ``size`` (long
side rounded to a multiple of 4; the reference saves 512 px short sides), batched by equal size and perturbed
with :class:`augment.DeepAugment` (one network per ``images_per_network`` images, per-image activation
perturbations). Work is split into ``num_shards`` shards by class (as the reference splits classes over GPUs)
or by file; run one process per shard. Finished files are skipped, so an interrupted run resumes; every file is
written to a temp file and renamed. A resumed shard draws fresh randomness for the remaining files.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from augment.deepaugment import DeepAugment
from augment.images import list_images, load_image, resized_shape, save_image

OUTPUT_DIRS = ("EDSR", "CAE")


def shard_files(files: list[Path], shard: int, num_shards: int, by: str = "class") -> list[Path]:
    """The files of shard ``shard`` of ``num_shards``: whole classes (contiguous blocks of the sorted class list,
    like the reference) when ``by == "class"``, every ``num_shards``-th file when ``by == "file"``."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= shard < num_shards, got shard={shard} num_shards={num_shards}")
    if by == "file":
        return files[shard::num_shards]
    if by != "class":
        raise ValueError(f"shard_by must be 'class' or 'file', got {by!r}")
    classes = sorted({f.parent.name for f in files})
    mine = set(classes[shard * len(classes) // num_shards : (shard + 1) * len(classes) // num_shards])
    return [f for f in files if f.parent.name in mine]


class _Images(Dataset):
    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        image = load_image(self.files[i])
        shape = resized_shape(*image.shape[-2:], self.size)
        return i, F.interpolate(image[None], size=shape, mode="bicubic", antialias=True)[0].clamp(0, 1)


def generate(
    data_root: Path | str,
    out: Path | str,
    edsr_weights: str,
    cae_weights: str,
    split: str = "train",
    shard: int = 0,
    num_shards: int = 1,
    shard_by: str = "class",
    size: int = 512,
    batch_size: int = 16,
    images_per_network: int = 16,
    workers: int = 2,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write the EDSR / CAE copies of one shard; returns {'written': n, 'skipped': n} (counted per source image)."""
    if size < 4 or size % 4:
        raise ValueError(f"size must be a positive multiple of 4, got {size}")
    root, out = Path(data_root).expanduser() / split, Path(out).expanduser()
    files = shard_files(list_images(root), shard, num_shards, shard_by)
    targets = {f: [out / d / f.parent.name / f.name for d in OUTPUT_DIRS] for f in files}
    todo = [f for f in files if not all(t.is_file() for t in targets[f])]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    augments = [
        DeepAugment(
            edsr_weights, cae_weights, p_edsr=p, p_cae=1 - p, images_per_network=images_per_network, seed=s
        )
        for p, s in ((1.0, 2 * (seed + shard)), (0.0, 2 * (seed + shard) + 1))
    ]
    augments = [a.to(device) for a in augments]
    loader = DataLoader(_Images(todo, size), batch_size=None, num_workers=workers)
    buckets: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)

    def flush(shape: tuple[int, int]) -> None:
        items = buckets.pop(shape)
        batch = torch.stack([image for _, image in items]).to(device)
        for k, augment in enumerate(augments):
            for (i, _), image in zip(items, augment(batch), strict=True):
                save_image(image, targets[todo[i]][k])

    with tqdm(
        total=len(todo), unit="img", desc=f"DeepAugment shard {shard}/{num_shards}", disable=not progress
    ) as bar:
        for i, image in loader:
            shape = tuple(image.shape[-2:])
            buckets[shape].append((i, image))
            if len(buckets[shape]) == batch_size:
                flush(shape)
                bar.update(batch_size)
        for shape in list(buckets):
            bar.update(len(buckets[shape]))
            flush(shape)
    return {"written": len(todo), "skipped": len(files) - len(todo)}

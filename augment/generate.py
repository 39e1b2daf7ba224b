"""Offline DeepAugment: write EDSR- and CAE-perturbed copies of an ImageNet-layout split, like the reference.

For every ``<data_root>/<split>/<wnid>/<file>`` this writes ``<out>/EDSR/<wnid>/<file>`` and
``<out>/CAE/<wnid>/<file>`` (JPEG quality 95 for JPEG names). Images are resized to short side ``size`` (long
side rounded to a multiple of 4; the reference saves 512 px short sides), batched by equal size and perturbed
with :class:`augment.DeepAugment` (one network per ``images_per_network`` images, per-image activation
perturbations). Work is split into ``num_shards`` shards by class (as the reference splits classes over GPUs)
or by file; run one process per shard. Finished files are skipped, so an interrupted run resumes; every file is
written to a temp file and renamed. ``<out>/generate.json`` records the settings that shape the outputs (size,
images per network, the networks' sha256); a run into the same ``out`` with other settings is refused, so one
folder never mixes two. A resumed shard restarts its generators: its remaining files get other draws than an
uninterrupted run would have given them. Unreadable source images are skipped, counted and named in a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from augment.deepaugment import DeepAugment
from augment.images import list_images, load_image, resized_shape, save_image, write_atomic
from augment.networks.cae import MIN_SIZE as MIN_CAE_SIZE

OUTPUT_DIRS = ("EDSR", "CAE")
MANIFEST = "generate.json"
log = logging.getLogger(__name__)


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

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        """(i, [3, H, W] in [0, 1] resized), or (i, None) for a file that cannot be read as an image."""
        try:
            image = load_image(self.files[i])
        except (OSError, ValueError):  # PIL's UnidentifiedImageError and truncated files are OSErrors
            return i, None
        shape = resized_shape(*image.shape[-2:], self.size)
        return i, F.interpolate(image[None], size=shape, mode="bicubic", antialias=True)[0].clamp(0, 1)


def check_options(size: int = 512, batch_size: int = 16, workers: int = 2) -> None:
    """Raise a one-line ValueError for arguments of :func:`generate` that cannot work."""
    if size < MIN_CAE_SIZE or size % 4:
        raise ValueError(
            f"size must be a multiple of 4 and >= {MIN_CAE_SIZE} (the CAE's minimum), got {size}"
        )
    if batch_size < 1 or workers < 0:
        raise ValueError(
            f"need batch_size >= 1 and workers >= 0, got batch_size={batch_size} workers={workers}"
        )


def file_digest(path: Path | str) -> str:
    """sha256 of a file's bytes (hex): what a network file holds, wherever it lies."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_manifest(out: Path, settings: dict, info: dict) -> None:
    """Write ``settings`` (and ``info``, recorded but not compared) to ``out/generate.json``, or raise if it holds
    different settings."""
    path = out / MANIFEST
    if path.is_file():
        recorded = json.loads(path.read_text())
        changed = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
        if changed:
            diff = ", ".join(f"{k}={old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise ValueError(
                f"out={out} holds images generated with other settings ({diff}); use another out= or the same settings"
            )
        return
    write_atomic(lambda tmp: Path(tmp).write_text(json.dumps({**settings, **info}, indent=2)), path)


def _seed(seed: int, shard: int, network: str) -> int:
    """A generator seed per (seed, shard, network), distinct for distinct triples (seed=1 shard=0 is not seed=0
    shard=1)."""
    digest = hashlib.sha256(f"{seed}/{shard}/{network}".encode()).digest()
    return int.from_bytes(digest[:7], "big")


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
    """Write the EDSR / CAE copies of one shard; returns {'written': n, 'skipped': n, 'unreadable': n} (counted per
    source image; skipped: both copies already there)."""
    check_options(size, batch_size, workers)
    root, out = Path(data_root).expanduser() / split, Path(out).expanduser()
    files = shard_files(list_images(root), shard, num_shards, shard_by)
    augments = [
        DeepAugment(
            edsr_weights,
            cae_weights,
            p_edsr=p,
            p_cae=1 - p,
            images_per_network=images_per_network,
            seed=_seed(seed, shard, name),
        )
        for p, name in ((1.0, "EDSR"), (0.0, "CAE"))
    ]
    paths = {"edsr_weights": Path(edsr_weights).expanduser(), "cae_weights": Path(cae_weights).expanduser()}
    # the networks by content: shards on nodes that pretrained their own (same cache path, other weights)
    # are refused, copies of one file under other paths are not
    networks = {f"{key}_sha256": file_digest(path) for key, path in paths.items()}
    _check_manifest(
        out,
        {"size": size, "images_per_network": images_per_network, **networks},
        {key: str(path.resolve()) for key, path in paths.items()},
    )
    targets = {f: [out / d / f.parent.name / f.name for d in OUTPUT_DIRS] for f in files}
    todo = [f for f in files if not all(t.is_file() for t in targets[f])]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    augments = [a.to(device) for a in augments]
    loader = DataLoader(_Images(todo, size), batch_size=None, num_workers=workers)
    buckets: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)

    def flush(shape: tuple[int, int]) -> None:
        items = buckets.pop(shape)
        batch = torch.stack([image for _, image in items]).to(device)
        for k, augment in enumerate(augments):
            for (i, _), image in zip(items, augment(batch), strict=True):
                save_image(image, targets[todo[i]][k])

    unreadable = []
    with tqdm(
        total=len(todo), unit="img", desc=f"DeepAugment shard {shard}/{num_shards}", disable=not progress
    ) as bar:
        for i, image in loader:
            if image is None:
                unreadable.append(todo[i])
                bar.update(1)
                continue
            shape = tuple(image.shape[-2:])
            buckets[shape].append((i, image))
            if len(buckets[shape]) == batch_size:
                flush(shape)
                bar.update(batch_size)
        for shape in list(buckets):
            count = len(buckets[shape])
            flush(shape)
            bar.update(count)
    if unreadable:
        names = ", ".join(str(f) for f in unreadable[:5])
        log.warning(
            "skipped %d unreadable image(s): %s%s",
            len(unreadable),
            names,
            " ..." if len(unreadable) > 5 else "",
        )
    written = len(todo) - len(unreadable)
    return {"written": written, "skipped": len(files) - len(todo), "unreadable": len(unreadable)}

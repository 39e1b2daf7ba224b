"""Build the evaluation datasets of the configured variants from a data root."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from evaluation.variants import SOURCES, Variant, get_variant
from train.data.datamodule import find_split
from train.data.folder import DataLayoutError, ImageFolderDataset, scan_folder

log = logging.getLogger(__name__)

MAX_REAL_LABELS = 9  # the largest ReaL label set has 9 classes


def load_real_labels(path: Path, val_files: Sequence[Path]) -> torch.Tensor:
    """ReaL label sets aligned with ``val_files``: [N, 9] int64, -1 padded (all -1 = not scored).

    ``real.json`` has one list per val file, in the order of the val file names sorted as
    strings (``ILSVRC2012_val_00000001.JPEG`` first), whatever folder each file sits in.
    """
    entries = json.loads(Path(path).read_text())
    names = sorted(f.name for f in val_files)
    if len(entries) != len(names):
        raise DataLayoutError(
            f"{path} has {len(entries)} label lists but the val split has {len(names)} images; "
            f"give the real.json that belongs to this val set (data.real_labels=...)"
        )
    position = {name: i for i, name in enumerate(names)}
    labels = torch.full((len(val_files), MAX_REAL_LABELS), -1, dtype=torch.long)
    for row, file in enumerate(val_files):
        entry = entries[position[file.name]]
        labels[row, : len(entry)] = torch.tensor(entry, dtype=torch.long)
    return labels


def real_labels_path(data_name: str, root: Path, configured: str | None) -> Path:
    """``data.real_labels``, else the benchmark's own file, else timm's bundled ImageNet copy."""
    if configured:
        return Path(configured)
    if data_name == "benchmark":
        return root / "real.json"
    import timm.data

    return Path(timm.data.__file__).parent / "_info" / "imagenet_real_labels.json"


@dataclass
class EvalSource:
    """One image set, the variants scored from it, and per-image extras (e.g. ReaL labels)."""

    key: str
    dataset: ImageFolderDataset
    variants: list[Variant]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def capped(self, max_images: int | None) -> Dataset:
        """A fixed, evenly spread subset of at most ``max_images`` images (the same every epoch)."""
        n = len(self.dataset)
        if max_images is None or max_images >= n:
            return self.dataset
        return Subset(self.dataset, torch.linspace(0, n - 1, max_images).round().long().tolist())


def build_sources(
    variant_names: Sequence[str],
    root: Path,
    classes: Sequence[str],
    transform: Callable,
    data_name: str,
    real_labels: str | None = None,
    strict: bool = False,
) -> list[EvalSource]:
    """Datasets for the requested variants, one per image source; absent sets are skipped with a warning."""
    variants = [get_variant(name) for name in variant_names]
    sources: dict[str, EvalSource] = {}
    for variant in variants:
        if variant.source not in sources:
            spec = SOURCES[variant.source]
            try:
                folder = find_split(root, spec.path) if spec.key == "val" else root / spec.path
                samples = scan_folder(folder, classes, spec.layout)
            except DataLayoutError as err:
                if strict:
                    raise
                log.warning("skipping variant %s: %s", variant.name, err)
                continue
            sources[spec.key] = EvalSource(spec.key, ImageFolderDataset(samples, transform), [])
        source = sources[variant.source]
        source.variants.append(variant)
        if variant.labels == "real" and "real_labels" not in source.extras:
            path = real_labels_path(data_name, root, real_labels)
            source.extras["real_labels"] = load_real_labels(path, [s.path for s in source.dataset.samples])
    return list(sources.values())

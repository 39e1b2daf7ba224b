"""Build the evaluation datasets of the configured variants from a data root."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import timm.data
import torch
from torch.utils.data import Dataset, Subset

from evaluation.metrics import IMAGENET_C_CORRUPTIONS, IMAGENET_C_EXTRA
from evaluation.variants import MINIVAL, Variant, get_variant
from train.data.benchmark import default_cache_dir
from train.data.datamodule import ImageNetDataModule, find_split
from train.data.folder import DataLayoutError, ImageFolderDataset, Sample, scan_folder
from train.data.shards import ShardSets
from train.data.transforms import eval_transform

if TYPE_CHECKING:
    from evaluation.config import EvaluateConfig
    from train.config import Config

log = logging.getLogger(__name__)

MAX_REAL_LABELS = 9  # the largest ReaL label set has 9 classes
SEVERITIES = 5  # ImageNet-C's severities 1..5
VAL = "val"
C_NAMES = (*IMAGENET_C_CORRUPTIONS, *IMAGENET_C_EXTRA)
IMAGENET = get_variant("imagenet")  # its folder is the clean val every other variant is compared with
TIMM_INFO = Path(timm.data.__file__).parent / "_info"


def load_real_labels(
    path: Path, val_files: Sequence[Path], remap: torch.Tensor | None = None
) -> torch.Tensor:
    """ReaL label sets aligned with ``val_files``: [N, 9] int64, -1 padded (all -1 = not scored).

    ``real.json`` has one list per val file, in the order of the val file names sorted as
    strings (``ILSVRC2012_val_00000001.JPEG`` first), whatever folder each file sits in. Its entries
    index the label-file class list; ``remap`` [K_file] int64 maps them to the model's class indices
    (-1: a class the model does not have, dropped from the set).
    """
    if not Path(path).is_file():
        raise DataLayoutError(f"ReaL labels {path} not found; give them with data.real_labels=<real.json>")
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
    if remap is not None:
        if labels.max() >= len(remap):
            raise DataLayoutError(
                f"{path} names class {int(labels.max())} but the list its entries index (data.label_classes) "
                f"has {len(remap)}; give the list real.json was written for"
            )
        labelled = (labels >= 0).any(1)
        labels = labels.where(labels < 0, remap[labels.clamp_min(0)])
        if labelled.any() and not (labels >= 0).any():
            raise DataLayoutError(
                f"none of {path}'s labels is among the model's classes; give data.label_classes=<the wnid list "
                "real.json indexes>"
            )
        if (lost := int((labelled & ~(labels >= 0).any(1)).sum())) > 0:
            log.warning("ReaL: %d labelled images have no label among the model's classes (not scored)", lost)
    return labels


def class_remap(numbered: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """[len(numbered)] int64: the position in ``classes`` of each class of ``numbered`` (-1 where absent)."""
    position = {w: i for i, w in enumerate(classes)}
    return torch.tensor([position.get(w, -1) for w in numbered], dtype=torch.long)


def real_labels_path(data_name: str, root: Path, configured: str | None) -> Path:
    """``data.real_labels``, else the benchmark's own file, else timm's bundled ImageNet copy."""
    if configured:
        return Path(configured)
    return root / "real.json" if data_name == "benchmark" else TIMM_INFO / "imagenet_real_labels.json"


def subset_indices(
    stem: str, root: Path, classes: Sequence[str], images: Path, release_folders: Sequence[str] | None
) -> tuple[list[str], torch.Tensor]:
    """The wnids of a class subset and their indices in ``classes``.

    The wnids come from ``<root>/<stem>_synsets.txt``, else timm's copy (A and R), else the class folders
    of the release in ``images``, ``release_folders`` (ImageNet-O, whose list timm does not ship: its 200
    folders are its classes; None: no such folder). When an index file ``<stem>_indices.txt`` exists it
    must agree with the class list.
    """
    folder = next((f for f in (root, TIMM_INFO) if (f / f"{stem}_synsets.txt").is_file()), None)
    if folder is not None:
        source = folder / f"{stem}_synsets.txt"
        wnids = source.read_text().split()
    elif release_folders is not None:
        source, wnids = images, sorted(release_folders)
    else:
        raise DataLayoutError(f"{images} does not exist; expected the layout <root>/<wnid>/<image>")
    position = {w: i for i, w in enumerate(classes)}
    missing = [w for w in wnids if w not in position]
    if missing:
        raise DataLayoutError(
            f"{source} names {len(missing)} wnids that are not among the model's {len(classes)} classes "
            f"(e.g. {missing[0]})"
        )
    indices = torch.tensor([position[w] for w in wnids], dtype=torch.long)
    index_file = (folder or root) / f"{stem}_indices.txt"
    if index_file.is_file():
        listed = torch.tensor([int(x) for x in index_file.read_text().split()], dtype=torch.long)
        if not torch.equal(listed, indices):
            raise DataLayoutError(
                f"{index_file} disagrees with the class list; they must map the same classes"
            )
    return wnids, indices


def scan_corruptions(folder: Path, classes: Sequence[str]) -> tuple[list[Sample], torch.Tensor, torch.Tensor]:
    """ImageNet-C layout ``<corruption>/<severity>/<wnid>/<image>`` -> samples, corruption ids, severities."""
    if not folder.is_dir():
        raise DataLayoutError(f"{folder} does not exist; expected <corruption>/<1..5>/<wnid>/<image>")
    samples, corruption, severity = [], [], []
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        if path.name not in C_NAMES:
            raise DataLayoutError(
                f"{path} is not an ImageNet-C corruption; expected one of {', '.join(C_NAMES)}"
            )
        for level in sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: p.name):
            if level.name not in {"1", "2", "3", "4", "5"}:
                raise DataLayoutError(f"{level} is not a severity folder 1..5")
            found = scan_folder(level, classes)
            samples += found
            corruption += [C_NAMES.index(path.name)] * len(found)
            severity += [int(level.name)] * len(found)
    if not samples:
        raise DataLayoutError(
            f"{folder} holds no corruption folders; expected <corruption>/<1..5>/<wnid>/<image>"
        )
    corruption_ids, severities = torch.tensor(corruption), torch.tensor(severity)
    partial = [
        C_NAMES[c]
        for c in corruption_ids.unique().tolist()
        if severities[corruption_ids == c].unique().numel() < SEVERITIES
    ]
    if partial:
        log.warning(
            "%s: %s lack some of the %d severities; their CE (and mCE) is not reported, only their errors",
            folder,
            ", ".join(partial),
            SEVERITIES,
        )
    return samples, corruption_ids, severities


@dataclass
class EvalSource:
    """One image folder, the variants scored from it, and per-image extras (ReaL labels, C ids)."""

    key: str
    dataset: ImageFolderDataset
    variants: list[Variant] = field(default_factory=list)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def capped(self, max_images: int | None) -> Dataset:
        """A fixed, evenly spread subset of at most ``max_images`` images (the same every epoch)."""
        n = len(self.dataset)
        if max_images is None or max_images >= n:
            return self.dataset
        return Subset(self.dataset, torch.linspace(0, n - 1, max_images).round().long().tolist())


@dataclass
class EvalSuite:
    """The evaluation sources plus the class subsets their variants restrict logits to."""

    sources: list[EvalSource]
    subsets: dict[str, torch.Tensor]  # variant name -> [S] model class indices

    def source(self, key: str) -> EvalSource | None:
        return next((s for s in self.sources if s.key == key), None)


def build_suite(
    variant_names: Sequence[str],
    root: Path,
    classes: Sequence[str],
    transform: Callable,
    data_name: str,
    minival: Callable[[], Sequence[Sample]] | None = None,
    paths: Mapping[str, str] | None = None,
    real_labels: str | None = None,
    strict: bool = False,
    shards: ShardSets | None = None,
    numbered: Sequence[str] | None = None,
) -> EvalSuite:
    """Datasets of the requested variants; a variant absent from disk is skipped with one warning
    naming the expected path (an error with ``strict``). A variant whose folder was written to
    ``shards`` (and not redirected by ``paths``) is read from its shard set, image for image.
    ``minival`` makes the minival samples (held out of train: read only when minival is asked for);
    ``numbered`` is the class list label files index (ReaL, ImageNetV2 folders; default ``classes``)."""
    numbered = classes if numbered is None else numbered
    paths = dict(paths or {})
    for name in paths:  # eval.paths keys must be variant names
        get_variant(name, key="eval.paths")
    sources: dict[str, EvalSource] = {}
    subsets: dict[str, torch.Tensor] = {}
    skipped: list[str] = []

    def folder_of(variant: Variant) -> Path:
        if variant.name in paths:
            return Path(paths[variant.name])
        if variant.path == VAL and IMAGENET.name in paths:  # ReaL labels the val images wherever they are
            return Path(paths[IMAGENET.name])
        if shards is not None and variant.path in shards.names:
            return shards.folder(variant.path)
        return find_split(root, VAL) if variant.path == VAL else root / variant.path

    def is_val(folder: Path) -> bool:
        try:
            return folder == folder_of(IMAGENET)
        except DataLayoutError:  # no val split: imagenet-real redirected elsewhere still scores
            return False

    def class_folders(folder: Path) -> list[str] | None:
        if shards is not None and shards.holds(folder):
            return shards.class_folders(folder.name)
        if not folder.is_dir():
            return None
        return [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]

    def scan(folder: Path, wnids: Sequence[str], layout: str = "wnid") -> list[Sample]:
        if shards is not None and shards.holds(folder):
            return shards.scan(folder, wnids, layout, numbered)
        return scan_folder(folder, wnids, layout, numbered)

    def add_source(key: str, make: Callable[[], tuple[list[Sample], dict[str, torch.Tensor]]]) -> EvalSource:
        if key not in sources:
            samples, extras = make()
            dataset = ImageFolderDataset(samples, transform)
            dataset.read_from(0)  # a set with no readable image is skipped here, not after a pass over it
            sources[key] = EvalSource(key, dataset, extras=extras)
        return sources[key]

    for variant in (get_variant(n) for n in variant_names):
        try:
            if variant.name == MINIVAL:
                held_out = list(minival()) if minival is not None else []
                if not held_out:
                    raise DataLayoutError("minival is empty; set data.minival_fraction > 0")
                source = add_source(MINIVAL, lambda h=held_out: (h, {}))
            elif variant.kind == "generated":
                val = folder_of(IMAGENET)
                source = add_source(VAL, lambda v=val: (scan(v, classes), {}))
            elif variant.kind == "corruption":
                folder = folder_of(variant)

                def make_c(folder: Path = folder):
                    samples, corruption, severity = scan_corruptions(folder, classes)
                    return samples, {"corruption": corruption, "severity": severity}

                source = add_source(str(folder), make_c)
            elif variant.kind in ("subset", "ood"):
                folder = folder_of(variant)
                wnids, indices = subset_indices(variant.subset, root, classes, folder, class_folders(folder))
                # scored against val images of the same classes (O: in-distribution, needed; A, R: clean accuracy)
                try:
                    val = (
                        sources[VAL].dataset.samples if VAL in sources else scan(folder_of(IMAGENET), classes)
                    )
                except DataLayoutError as err:
                    if variant.kind == "ood":
                        raise
                    log.warning(
                        "%s: no clean val images (%s): clean_top1 and gap not reported", variant.name, err
                    )
                    val = None
                if variant.kind == "ood" and not set(indices.tolist()) & {s.target for s in val}:
                    raise DataLayoutError(
                        f"val has no images of its {len(wnids)} classes, its in-distribution set"
                    )
                samples = scan(folder, wnids)  # read only once val is known to serve
                if val is not None:
                    add_source(VAL, lambda v=val: (list(v), {}))
                subsets[variant.name] = indices
                source = add_source(str(folder), lambda s=samples: (s, {}))
            else:
                folder = folder_of(variant)
                # imagenet's folder is the clean val of relative CE, A / R / O's clean set: one source
                key = VAL if is_val(folder) else str(folder)
                source = add_source(key, lambda f=folder, v=variant: (scan(f, classes, v.layout), {}))
                if variant.kind == "real" and "real_labels" not in source.extras:
                    files = [s.path for s in source.dataset.samples]
                    source.extras["real_labels"] = load_real_labels(
                        real_labels_path(data_name, root, real_labels), files, class_remap(numbered, classes)
                    )
        except DataLayoutError as err:
            if strict:
                raise DataLayoutError(
                    f"{err} (eval.strict=true: point eval.paths.{variant.name}=<folder> at it, or leave "
                    f"{variant.name} out of eval.variants)"
                ) from None
            log.warning("skipping variant %s: %s", variant.name, err)
            skipped.append(variant.name)
            continue
        source.variants.append(variant)
    if skipped:
        log.warning(
            "%d of %d eval.variants skipped: %s", len(skipped), len(variant_names), ", ".join(skipped)
        )
    return EvalSuite(list(sources.values()), subsets)


def build_data(conf: Config | EvaluateConfig) -> tuple[ImageNetDataModule, EvalSuite]:
    """The data module (``conf.data``) with one evaluation source per folder of ``conf.eval.variants``;
    shared by the training and evaluation programs."""
    cache_dir = Path(conf.paths.cache_dir) if conf.paths.cache_dir else default_cache_dir()
    data = ImageNetDataModule(conf.data, cache_dir=cache_dir, seed=conf.seed)
    suite = build_suite(
        conf.eval.variants,
        data.root,
        data.classes,
        eval_transform(conf.data),
        conf.data.name,
        minival=lambda: data.minival_samples,
        paths=conf.eval.paths,
        real_labels=conf.data.real_labels,
        strict=conf.eval.strict,
        shards=data.shards,
        numbered=data.label_classes,
    )
    if not suite.sources:
        raise ValueError(f"none of eval.variants={conf.eval.variants} was found under {data.root}")
    data.eval_sources = suite.sources
    return data, suite

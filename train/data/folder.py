"""Image folders in the real ImageNet release layouts, robust to bad files.

Two layouts are read: ``<root>/<wnid>/<file>`` (ImageNet train/val, Sketch, A, R, O, C) where the
label is the wnid's position in a class list, and ``<root>/<int>/<file>`` (ImageNetV2) where folder
``i`` holds the ``i``-th class of the list the release numbers (ImageNet-1k's sorted wnids), mapped
to its position in the model's class list (numbers are never string-sorted). Files are sorted with a
natural key like timm, so ``img2`` comes before ``img10``. Hidden files and folders are ignored.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DataLayoutError(ValueError):
    """A dataset folder is missing or does not have the expected layout."""


def natural_key(text: str) -> list[int | str]:
    """Sort key comparing digit runs as integers: ``a2 < a10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class TarMember(NamedTuple):
    """Where an image's bytes sit inside a shard written by ``python -m train.shards``."""

    tar: str  # shard file
    key: str  # webdataset sample key
    offset: int  # byte offset of the image data in the tar
    size: int  # bytes


@dataclass(frozen=True)
class Sample:
    path: Path  # the file, or for a shard member its path in the source tree (under the shard folder)
    target: int  # class index in the model's class list
    member: TarMember | None = None  # set when the image is read from a shard


def read_member(member: TarMember) -> bytes:
    """The stored bytes of one shard member (one seek and one read)."""
    with open(member.tar, "rb") as handle:
        handle.seek(member.offset)
        return handle.read(member.size)


def scan_folder(
    root: Path, classes: Sequence[str], layout: str = "wnid", numbered: Sequence[str] | None = None
) -> list[Sample]:
    """List the images under ``root`` with their class index.

    Args:
        root: folder holding one sub-folder per class.
        classes: the model's class list (wnids); a folder's label is its class's position here.
        layout: ``"wnid"`` (folders named by wnid) or ``"int"`` (folders named ``0..K-1``).
        numbered: for ``layout="int"``, the class list the folder numbers index (default ``classes``).

    Raises:
        DataLayoutError: root missing, no class folders, or folders not matching the layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(
            f"dataset folder {root} does not exist; expected the layout {expected_layout(layout)}"
        )
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )
    labels = folder_labels(root, [p.name for p in folders], classes, layout, numbered)
    samples: list[Sample] = []
    for folder in folders:
        files = sorted(
            (f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")),
            key=lambda f: natural_key(f.name),
        )
        if not files:
            log.warning("class folder %s is empty", folder)
        samples.extend(Sample(f, labels[folder.name]) for f in files)
    if not samples:
        raise DataLayoutError(
            f"{root} has class folders but no images; expected the layout {expected_layout(layout)}"
        )
    return samples


def expected_layout(layout: str) -> str:
    return "<root>/<wnid>/<image>" if layout == "wnid" else "<root>/<class index>/<image>"


def folder_labels(
    root: Path,
    names: Sequence[str],
    classes: Sequence[str],
    layout: str = "wnid",
    numbered: Sequence[str] | None = None,
) -> dict[str, int]:
    """Class index of each class folder name under ``root`` (see :func:`scan_folder`).

    Raises:
        DataLayoutError: no folders, or folder names not matching the layout / class list.
    """
    expected = expected_layout(layout)
    folders = [Path(name) for name in names]
    if not folders:
        raise DataLayoutError(f"{root} has no class folders; expected the layout {expected}")
    if layout == "int":
        bad = [p.name for p in folders if not p.name.isdigit()]
        if bad:
            raise DataLayoutError(
                f"{root} has non-numeric folders ({', '.join(bad[:3])}); the int layout (ImageNetV2) "
                f"expects folders 0..K-1; use layout 'wnid' for wnid folders"
            )
        numbered = classes if numbered is None else numbered
        beyond = [p.name for p in folders if int(p.name) >= len(numbered)]
        if beyond:
            raise DataLayoutError(
                f"{root} has folder {beyond[0]} but the int layout (ImageNetV2) numbers only {len(numbered)} "
                f"classes (folders 0..{len(numbered) - 1})"
            )
        index = {wnid: i for i, wnid in enumerate(classes)}
        unknown = [p.name for p in folders if numbered[int(p.name)] not in index]
        if unknown:
            raise DataLayoutError(
                f"{root}: folder {unknown[0]} holds class {numbered[int(unknown[0])]}, which is not in the "
                f"{len(classes)} classes of the model (folder numbers index data.label_classes: ImageNet-1k's "
                "sorted wnids unless set)"
            )
        labels = {p.name: index[numbered[int(p.name)]] for p in folders}
    elif layout == "wnid":
        index = {wnid: i for i, wnid in enumerate(classes)}
        unknown = [p.name for p in folders if p.name not in index]
        if unknown:
            hint = (
                " (numeric folders: this looks like ImageNetV2; use layout 'int')"
                if unknown[0].isdigit()
                else ""
            )
            raise DataLayoutError(
                f"{root} has {len(unknown)} folders that are not among the {len(classes)} wnids it is scored "
                f"on (e.g. {unknown[0]!r})"
                f"{hint}; expected the layout {expected}"
            )
        labels = {p.name: index[p.name] for p in folders}
    else:
        raise ValueError(f"layout={layout!r} is unknown; use 'wnid' or 'int'")
    return labels


class ImageFolderDataset(Dataset):
    """Images with their class index; an unreadable file is replaced by the next readable one.

    Items are ``(image, target, index, bad)``: ``image`` is what ``transform`` makes of the RGB PIL
    image (float [3,H,W] in [0,1] with this project's transforms), ``target`` the class index,
    ``index`` the position of the sample actually returned, and ``bad`` the index of an unreadable
    file that was replaced (-1 when none). The batch size stays fixed; the caller counts ``bad``.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [s.target for s in self.samples]

    def load(self, index: int) -> Image.Image:
        sample = self.samples[index]
        source = sample.path if sample.member is None else io.BytesIO(read_member(sample.member))
        with Image.open(source) as image:
            return image.convert("RGB")

    def read_from(self, index: int) -> tuple[Image.Image, int, int]:
        """The first readable image at or after ``index`` (wrapping round): ``(image, its index, the first
        unreadable index met or -1)``; DataLayoutError, naming a file, when no image of the set is readable."""
        bad = -1
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            try:
                return self.load(i), i, bad
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
                if bad < 0:
                    bad = i
                log.debug("unreadable image %s: %s", self.samples[i].path, err)
        raise DataLayoutError(
            f"no readable image among the {len(self.samples)} files of this set (e.g. {self.samples[0].path}); "
            "replace the files or leave the set out"
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        image, i, bad = self.read_from(index)
        return self.transform(image), self.samples[i].target, i, bad

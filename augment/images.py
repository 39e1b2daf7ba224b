"""Image files in ImageNet layout (``root/<wnid>/<file>``): listing, loading and saving."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def list_images(root: Path | str) -> list[Path]:
    """Sorted image files ``root/<class>/<file>`` (JPEG or PNG); raises if there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder not found: {root}; pass an ImageNet-layout folder root/<wnid>/<file>"
        )
    files = sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(
            f"no JPEG/PNG images in {root}/<class>/; expected the ImageNet layout root/<wnid>/<file>"
        )
    return files


def resized_shape(height: int, width: int, size: int, multiple: int = 4) -> tuple[int, int]:
    """(H, W) with short side ``size`` and the long side scaled and rounded to a multiple of ``multiple``
    (4 by default: the CAE needs it)."""
    scale = size / min(height, width)
    return tuple(max(size, round(s * scale / multiple) * multiple) for s in (height, width))


def load_image(path: Path, size: int | None = None) -> Tensor:
    """Read an RGB image as float [3, H, W] in [0, 1]; with ``size``: short side resized to it, centre-cropped square."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None:
            scale = size / min(img.size)
            w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
            img = img.resize((w, h), Image.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255


def load_images(paths: Sequence[Path], size: int) -> Tensor:
    """Square centre crops of ``paths`` as uint8 [N, 3, size, size]."""
    return torch.stack([(load_image(p, size) * 255).round().to(torch.uint8) for p in paths])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file; mkstemp's own files are 0600


def write_atomic(write: Callable[[str], None], path: Path) -> None:
    """``write(tmp_path)`` into a temp file beside ``path``, then rename it onto ``path`` with the usual file mode
    (0666 less the umask): readers never see a partial file, and other users can read shared outputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_image(image: Tensor, path: Path) -> None:
    """Write [3, H, W] in [0, 1] atomically (:func:`write_atomic`); the format follows the suffix (JPEG quality 95)."""
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    fmt = "JPEG" if path.suffix.lower() in (".jpeg", ".jpg") else "PNG"
    options = {"quality": 95} if fmt == "JPEG" else {}
    write_atomic(lambda tmp: Image.fromarray(array).save(tmp, format=fmt, **options), path)

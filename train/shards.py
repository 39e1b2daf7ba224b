"""Write WebDataset shards from an ImageNet-layout folder: ``python -m train.shards <root> <out>``.

Each image set found under the root (``train``, ``val`` and the test variants' folders; not the
nested ImageNet-C layout) becomes ``<out>/<set>-%06d.tar`` with, per image, the original bytes
unchanged (``<key>.jpg``, or the file's own extension), the class index (``<key>.cls``) and the
path relative to the set's folder (``<key>.path``), plus ``<out>/<set>.shards.json`` listing
every member with its byte offset (see :mod:`train.data.shards`). The root's small label files
(``classes.txt``, ``real.json``, ``*_synsets.txt``, ...) are copied, so ``<out>`` can serve as
``data.root`` too. Read back with ``data=imagenet_wds data.shards=<out>``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from evaluation.variants import VARIANTS
from train.config import DataConfig
from train.data.datamodule import VAL_SPLIT_NAMES, find_split, load_classes
from train.data.folder import DataLayoutError, scan_folder
from train.data.shards import FORMAT, MANIFEST_SUFFIX

LABEL_FILES = ("*.txt", "real.json")


def default_sets(root: Path) -> list[str]:
    """``train``, ``val`` and every variant folder present under ``root`` (ImageNet-C excluded)."""
    paths = dict.fromkeys(["train", "val", *(v.path for v in VARIANTS.values() if v.kind != "corruption")])
    return [
        p
        for p in paths
        if (root / p).is_dir() or (p == "val" and any((root / n).is_dir() for n in VAL_SPLIT_NAMES))
    ]


def layout_of(name: str) -> str:
    return next((v.layout for v in VARIANTS.values() if v.path == name), "wnid")


def write_set(
    folder: Path, name: str, out: Path, classes: Sequence[str], shard_size: int, progress: bool = True
) -> dict:
    """Write one image set's shards and manifest; returns the manifest."""
    layout = layout_of(name)
    samples = scan_folder(folder, classes, layout)
    shards, members = [], []
    bar = tqdm(total=len(samples), desc=f"shards {name}", unit="img", disable=not progress)
    for start in range(0, len(samples), shard_size):
        file = f"{name}-{len(shards):06d}.tar"
        chunk = samples[start : start + shard_size]
        rows = {}
        with wds.TarWriter(str(out / file), encoder=False) as sink:
            for i, sample in enumerate(chunk, start):
                key, rel = f"{i:08d}", sample.path.relative_to(folder).as_posix()
                ext = sample.path.suffix.lower().lstrip(".").replace("jpeg", "jpg")
                sink.write(
                    {
                        "__key__": key,
                        ext: sample.path.read_bytes(),
                        "cls": b"%d" % sample.target,
                        "path": rel.encode(),
                    }
                )
                rows[f"{key}.{ext}"] = [len(shards), key, rel, sample.target]
                bar.update()
        with tarfile.open(out / file) as tar:  # byte offsets of the image members, for exact reading
            offsets = {m.name: (m.offset_data, m.size) for m in tar if m.name in rows}
        members += [[*row, *offsets[member]] for member, row in rows.items()]
        shards.append({"file": file, "count": len(chunk)})
    bar.close()
    manifest = {
        "format": FORMAT,
        "set": name,
        "source": str(folder),
        "layout": layout,
        "classes": list(classes),
        "count": len(samples),
        "shards": shards,
        "members": members,
    }
    (out / f"{name}{MANIFEST_SUFFIX}").write_text(json.dumps(manifest))
    return manifest


def write_shards(
    root: Path,
    out: Path,
    sets: Sequence[str] | None = None,
    classes_file: str | None = None,
    shard_size: int = 1000,
    progress: bool = True,
) -> dict[str, int]:
    """Shards of ``sets`` (default: :func:`default_sets`) of ``root`` into ``out``; returns image counts."""
    root, out = Path(root).expanduser(), Path(out).expanduser()
    if not root.is_dir():
        raise DataLayoutError(f"{root} does not exist; give the data root (<root>/train/<wnid>/...)")
    if shard_size < 1:
        raise ValueError(f"--shard-size={shard_size}; give a positive number of images per shard")
    if classes_file is None and (root / "classes.txt").is_file():
        classes_file = str(root / "classes.txt")
    classes = load_classes(DataConfig(name="imagenet", classes=classes_file), root)
    sets = list(sets or default_sets(root))
    for name in sets:
        if name == "imagenet-c":
            raise ValueError(
                "imagenet-c's nested <corruption>/<severity>/<wnid> layout is not sharded; "
                "keep it as a folder (eval.paths.imagenet-c=<folder>)"
            )
    out.mkdir(parents=True, exist_ok=True)
    for pattern in LABEL_FILES:
        for file in root.glob(pattern):
            shutil.copy2(file, out / file.name)
    counts = {}
    for name in sets:
        folder = find_split(root, "val") if name == "val" else root / name
        counts[name] = write_set(folder, name, out, classes, shard_size, progress)["count"]
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.shards", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="data root in the ImageNet folder layout")
    parser.add_argument("out", type=Path, help="output folder for <set>-%%06d.tar and <set>.shards.json")
    parser.add_argument(
        "--split", action="append", dest="sets", help="set to write (repeatable; default: all found)"
    )
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument(
        "--classes", help="class list file (default <src>/classes.txt, else timm's ImageNet-1k)"
    )
    args = parser.parse_args(argv)
    try:
        counts = write_shards(args.src, args.out, args.sets, args.classes, args.shard_size)
    except (DataLayoutError, ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")
    for name, count in counts.items():
        print(f"{name}: {count} images")


if __name__ == "__main__":
    main()

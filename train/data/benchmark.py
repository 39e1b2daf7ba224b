"""The embedded benchmark: a procedurally generated miniature of ImageNet and its test variants.

``ensure_benchmark()`` draws, once per (version, seed, image size, scale), 20 shape classes in the
on-disk layouts of the real datasets, so that the real loaders read them unchanged::

    classes.txt, class_names.txt, MANIFEST.json, real.json
    train/<wnid>/<wnid>_<n>.JPEG
    val/<wnid>/ILSVRC2012_val_<%08d>.JPEG              (numbers shuffled across classes)
    imagenetv2-{matched-frequency,threshold0.7,top-images}-format-val/<class index>/<hex>.jpeg
    sketch/<wnid>/sketch_<n>.JPEG
    imagenet-{r,a,o}/<wnid>/*.jpg  + imagenet_{r,a,o}_{synsets,indices}.txt   (10-class subsets)
    imagenet-c/<corruption>/<severity>/<wnid>/ILSVRC2012_val_<%08d>.JPEG

Generation is deterministic (per-image seeds derive from (seed, split, index), whatever the
number of workers), atomic (written to a temporary folder, then renamed) and guarded by a file
lock, so parallel tests, DDP ranks and multirun jobs can all call ``ensure_benchmark``.

Run ``python -m train.data.benchmark [--seed N] [--root DIR] [--force]`` to (re)generate it.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image
from platformdirs import user_cache_dir
from tqdm import tqdm

from ._scenes import NUM_CLASSES, RENDITIONS, Domain, natural, rendition, sketch
from ._shapes import CLASS_SHAPES, OOD_SHAPES

BENCHMARK_VERSION = 3
CACHE_ENV = "SIGROB_CACHE_DIR"
MANIFEST = "MANIFEST.json"
WNIDS: tuple[str, ...] = tuple(f"n{90000000 + i:08d}" for i in range(NUM_CLASSES))
"""Fake WordNet ids of the 20 classes; class ``i`` is ``WNIDS[i]`` (already sorted)."""
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 scored ImageNet-C corruptions, rendered with the ``imagecorruptions`` package."""

_V2 = "imagenetv2-{}-format-val"
_TRAIN = Domain()
_SINGLE = replace(_TRAIN, second_prob=0.0, ambiguous_prob=0.0)  # one object, never ambiguous (A, O)
_V2_DOMAINS = {  # mild shifts: smaller/more varied objects, brighter colours, weaker or stronger shortcut
    _V2.format("matched-frequency"): replace(_TRAIN, radius=(0.22, 0.42), hue_jitter=0.05, pref_prob=0.6),
    _V2.format("threshold0.7"): replace(_TRAIN, radius=(0.27, 0.46), value_shift=0.1, pref_prob=0.65),
    _V2.format("top-images"): replace(_TRAIN, radius=(0.28, 0.46), hue_jitter=0.02, pref_prob=0.75),
}
_COUNTS = {  # at scale 1: images per class (ImageNet-O: per folder; ImageNet-C: val images in all)
    "train": 400,
    "val": 50,
    _V2.format("matched-frequency"): 20,
    _V2.format("threshold0.7"): 10,
    _V2.format("top-images"): 10,
    "sketch": 20,
    "imagenet-r": 30,
    "imagenet-a": 30,
    "imagenet-o": 20,
    "imagenet-c": 40,  # the first 2 val images of every class
}
SPLITS: tuple[str, ...] = tuple(_COUNTS)
"""Top-level folders of the benchmark, in generation order (ImageNet-C is made from val)."""
_SUBSET_SIZE = 10


@dataclass(frozen=True)
class _Job:
    """One image: the ``index``-th of ``split`` (which seeds it), of class ``label``, saved at ``path``.

    ``style`` is "sketch", a rendition style, or None for a photo-like image of ``domain``; ``shape``
    overrides the class silhouette (held-out shapes of ImageNet-O).
    """

    path: str
    split: str
    index: int
    label: int
    domain: Domain = _TRAIN
    style: str | None = None
    shape: str | None = None


@dataclass(frozen=True)
class _Plan:
    """What to generate: seed, image size and count scale; derives counts and class subsets."""

    seed: int
    size: int
    scale: float

    def n(self, split: str) -> int:
        return max(1, round(_COUNTS[split] * self.scale))

    def subsets(self) -> dict[str, list[int]]:
        """The 10-class subsets of ImageNet-R, -A and -O (R and A overlap by half; O is R's complement)."""
        perm = np.random.default_rng([self.seed, _crc("subsets")]).permutation(NUM_CLASSES)
        half = _SUBSET_SIZE // 2
        return {
            "r": sorted(perm[:_SUBSET_SIZE].tolist()),
            "a": sorted(perm[half : half + _SUBSET_SIZE].tolist()),
            "o": sorted(perm[NUM_CLASSES - _SUBSET_SIZE :].tolist()),
        }


def _crc(name: str) -> int:
    return zlib.crc32(name.encode())


def _split_jobs(plan: _Plan, split: str) -> list[_Job]:
    """The images of ``split`` in a fixed order (the order defines their seeds)."""
    n, subsets = plan.n(split), plan.subsets()
    if split == "train":
        return [
            _Job(f"train/{WNIDS[i // n]}/{WNIDS[i // n]}_{i % n}.JPEG", split, i, i // n)
            for i in range(NUM_CLASSES * n)
        ]
    if split == "val":
        return [
            _Job(f"val/{WNIDS[c]}/ILSVRC2012_val_{number:08d}.JPEG", split, i, c)
            for i, (c, number) in enumerate(_val_numbers(plan))
        ]
    if split in _V2_DOMAINS:
        names = np.random.default_rng([plan.seed, _crc(split)]).bytes(20 * NUM_CLASSES * n)
        return [
            _Job(
                f"{split}/{i // n}/{names[20 * i : 20 * i + 20].hex()}.jpeg",
                split,
                i,
                i // n,
                _V2_DOMAINS[split],
            )
            for i in range(NUM_CLASSES * n)
        ]
    if split == "sketch":
        return [
            _Job(f"sketch/{WNIDS[i // n]}/sketch_{i % n}.JPEG", split, i, i // n, style="sketch")
            for i in range(NUM_CLASSES * n)
        ]
    labels = [c for c in subsets[split.removeprefix("imagenet-")] for _ in range(n)]
    if split == "imagenet-r":
        styles = [RENDITIONS[i % len(RENDITIONS)] for i in range(len(labels))]
        return [
            _Job(f"{split}/{WNIDS[c]}/{s}_{i}.jpg", split, i, c, style=s)
            for i, (c, s) in enumerate(zip(labels, styles, strict=True))
        ]
    if split == "imagenet-a":
        hard = replace(
            _SINGLE, radius=(0.15, 0.28), decoys=tuple(subsets["a"]), decoy_prob=0.7, pref_prob=0.1, clutter=4
        )
        return [_Job(f"{split}/{WNIDS[c]}/a_{i}.jpg", split, i, c, hard) for i, c in enumerate(labels)]
    if split == "imagenet-o":
        shapes = [OOD_SHAPES[i % len(OOD_SHAPES)] for i in range(len(labels))]
        return [
            _Job(f"{split}/{WNIDS[c]}/{s}_{i}.jpg", split, i, c, _SINGLE, shape=s)
            for i, (c, s) in enumerate(zip(labels, shapes, strict=True))
        ]
    raise KeyError(f"unknown split {split!r}; choose one of {SPLITS}")


def _val_numbers(plan: _Plan) -> list[tuple[int, int]]:
    """(class, ILSVRC2012_val number) per val image, class-major; numbers 1..N in a shuffled order."""
    n = plan.n("val")
    numbers = np.random.default_rng([plan.seed, _crc("val-numbers")]).permutation(NUM_CLASSES * n) + 1
    return [(i // n, int(numbers[i])) for i in range(NUM_CLASSES * n)]


def _render(root: str, seed: int, size: int, job: _Job) -> list[int]:
    """Draw ``job`` from its own seed, save it under ``root`` (JPEG quality 90); return classes present."""
    rng = np.random.default_rng([seed, _crc(job.split), job.index])
    if job.style == "sketch":
        image, present = sketch(rng, job.label, size), [job.label]
    elif job.style is not None:
        image, present = rendition(rng, job.label, size, job.style), [job.label]
    else:
        image, present = natural(rng, job.label, size, job.domain, job.shape)
    Image.fromarray(image).save(os.path.join(root, job.path), quality=90)
    return present


def _corrupt(root: str, seed: int, source: str) -> None:
    """Write the 15 x 5 ImageNet-C versions of val image ``source`` (JPEG quality 85)."""
    from imagecorruptions import corrupt, corruption_dict

    image = np.asarray(Image.open(os.path.join(root, source)).convert("RGB"))
    wnid, name = source.split("/")[1:]
    for corruption in CORRUPTIONS:
        takes_seed = "seed" in inspect.signature(corruption_dict[corruption]).parameters
        for severity in range(1, 6):
            state = int(
                np.random.SeedSequence([seed, _crc(corruption), severity, _crc(name)]).generate_state(1)[0]
            )
            np.random.seed(state)  # most corruptions draw from the global numpy RNG, a few take a seed
            kwargs = {"seed": state} if takes_seed else {}
            out = corrupt(image, severity=severity, corruption_name=corruption, **kwargs)
            path = os.path.join(root, "imagenet-c", corruption, str(severity), wnid, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(out).save(path, quality=85)


def _run(fn: Callable, items: list, pool: ProcessPoolExecutor | None, desc: str, progress: bool) -> list:
    results = pool.map(fn, items, chunksize=max(1, len(items) // 64)) if pool else map(fn, items)
    return list(tqdm(results, total=len(items), desc=desc, disable=not progress, leave=False))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def _write_metadata(root: Path, plan: _Plan, val_present: list[list[int]]) -> None:
    _write_lines(root / "classes.txt", list(WNIDS))
    _write_lines(root / "class_names.txt", [f"{w}\t{s}" for w, s in zip(WNIDS, CLASS_SHAPES, strict=True)])
    by_number = sorted(zip(_val_numbers(plan), val_present, strict=True), key=lambda x: x[0][1])
    (root / "real.json").write_text(json.dumps([present for _, present in by_number]))
    for name, subset in plan.subsets().items():
        _write_lines(root / f"imagenet_{name}_synsets.txt", [WNIDS[c] for c in subset])
        _write_lines(root / f"imagenet_{name}_indices.txt", [str(c) for c in subset])


def content_hash(root: Path) -> str:
    """sha256 over the sorted relative paths and bytes of every file under ``root`` except the manifest."""
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_manifest(root: Path, plan: _Plan, seconds: dict[str, float]) -> None:
    manifest = {
        "version": BENCHMARK_VERSION,
        "seed": plan.seed,
        "image_size": plan.size,
        "scale": plan.scale,
        "num_classes": NUM_CLASSES,
        "counts": {split: sum(1 for p in (root / split).rglob("*") if p.is_file()) for split in SPLITS},
        "seconds": {split: round(s, 2) for split, s in seconds.items()},
        "bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        "sha256": content_hash(root),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _generate(root: Path, plan: _Plan, workers: int, progress: bool) -> None:
    seconds: dict[str, float] = {}
    val_present: list[list[int]] = []
    pool = (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None
    )
    with pool or nullcontext():
        for split in SPLITS:
            start = time.perf_counter()
            if split == "imagenet-c":
                val, per_class = _split_jobs(plan, "val"), plan.n("val")
                round_robin = [val[c * per_class + k] for k in range(per_class) for c in range(NUM_CLASSES)]
                sources = [job.path for job in round_robin[: plan.n(split)]]
                _run(partial(_corrupt, str(root), plan.seed), sources, pool, split, progress)
            else:
                jobs = _split_jobs(plan, split)
                for directory in {os.path.dirname(job.path) for job in jobs}:
                    (root / directory).mkdir(parents=True, exist_ok=True)
                present = _run(partial(_render, str(root), plan.seed, plan.size), jobs, pool, split, progress)
                val_present = present if split == "val" else val_present
            seconds[split] = time.perf_counter() - start
            if progress:
                print(f"{split}: {seconds[split]:.1f} s", file=sys.stderr)
    _write_metadata(root, plan, val_present)
    _write_manifest(root, plan, seconds)


def default_cache_dir() -> Path:
    """``$SIGROB_CACHE_DIR`` if set, else the user cache dir of ``sigmoid-robustness``."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("sigmoid-robustness"))


def benchmark_dir(
    root: Path | str | None = None, seed: int = 0, image_size: int = 64, scale: float = 1.0
) -> Path:
    """Where the benchmark for these settings lives: ``<root>/benchmark-v<VERSION>-seed<seed>[...]``."""
    name = f"benchmark-v{BENCHMARK_VERSION}-seed{seed}"
    if image_size != 64:
        name += f"-px{image_size}"
    if scale != 1.0:
        name += f"-scale{scale:g}"
    return Path(root if root is not None else default_cache_dir()).expanduser() / name


def ensure_benchmark(
    root: Path | str | None = None,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = True,
    *,
    scale: float = 1.0,
    workers: int | None = None,
    force: bool = False,
) -> Path:
    """Return the benchmark folder for these settings, generating it first if it is missing.

    Args:
        root: cache directory holding versioned benchmarks (default: ``default_cache_dir()``).
        seed: generation seed; the same seed gives byte-identical files.
        image_size: side of every image in pixels (>= 32).
        progress: show a progress bar and the seconds spent per split.
        scale: multiplies every per-class image count (>= 1 image per class remains); for tests.
        workers: generation processes (default: up to 2); the result does not depend on it.
        force: delete an existing copy and generate it again.

    Returns:
        ``benchmark_dir(root, seed, image_size, scale)``, complete and with its ``MANIFEST.json``.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (ImageNet-C corruptions need it), got {image_size}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    target = benchmark_dir(root, seed, image_size, scale)
    if not force and (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if target.exists() and (force or not (target / MANIFEST).is_file()):
            if not force:
                raise FileExistsError(
                    f"{target} exists but is incomplete (no {MANIFEST}); delete it or pass force"
                )
            trash = tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent)
            os.rename(target, os.path.join(trash, "old"))
            shutil.rmtree(trash)
        if (target / MANIFEST).is_file():
            return target
        logging.getLogger(__name__).info("generating benchmark at %s", target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            _generate(tmp, _Plan(seed, image_size, scale), workers, progress)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def read_manifest(root: Path | str) -> dict:
    """The ``MANIFEST.json`` of a generated benchmark folder."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; generate the benchmark with ensure_benchmark() first")
    return json.loads(path.read_text())


def benchmark_hash(root: Path | str) -> str:
    """The content hash (sha256 hex) recorded when the benchmark at ``root`` was generated."""
    return read_manifest(root)["sha256"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m train.data.benchmark", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--root", type=Path, default=None, help="cache directory (default: %(default)s -> user cache)"
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every per-class image count")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="regenerate even if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    path = ensure_benchmark(
        args.root, args.seed, args.image_size, scale=args.scale, workers=args.workers, force=args.force
    )
    manifest = read_manifest(path)
    print(path)
    for split, count in manifest["counts"].items():
        print(f"  {split:42s} {count:6d} images  {manifest['seconds'][split]:6.1f} s")
    size_mib, seconds = manifest["bytes"] / 2**20, time.perf_counter() - start
    print(f"  {size_mib:.1f} MiB, sha256 {manifest['sha256'][:16]}..., {seconds:.1f} s")


if __name__ == "__main__":
    main()

"""The embedded benchmark: layouts, label files, determinism, locking and atomicity."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

import train.data.benchmark as bm
from train.data._scenes import NUM_CLASSES, Domain, natural, preferred_style
from train.data._shapes import CLASS_SHAPES, OOD_SHAPES, shape_mask

SCALE = 0.02  # 8 train images per class, 1 per class elsewhere, 1 val image in ImageNet-C
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bench(tmp_path_factory) -> Path:
    return bm.ensure_benchmark(
        tmp_path_factory.mktemp("cache"), seed=0, scale=SCALE, workers=2, progress=False
    )


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _sha256(root: Path) -> str:
    digest = hashlib.sha256()
    for path in _files(root):
        if path.name != "MANIFEST.json":
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_classes_and_names(bench):
    wnids = _lines(bench / "classes.txt")
    assert len(wnids) == 20 and wnids == sorted(wnids) and len(set(wnids)) == 20
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    names = [line.split("\t") for line in _lines(bench / "class_names.txt")]
    assert [w for w, _ in names] == wnids and len({n for _, n in names}) == 20


def test_train_and_val_layout(bench):
    wnids = _lines(bench / "classes.txt")
    assert sorted(p.name for p in (bench / "train").iterdir()) == wnids
    for w in wnids:
        files = sorted(p.name for p in (bench / "train" / w).iterdir())
        assert files == sorted(f"{w}_{k}.JPEG" for k in range(8))
    val = sorted((bench / "val").rglob("*.JPEG"), key=lambda p: p.name)
    assert {p.parent.name for p in val} == set(wnids)
    assert [p.name for p in val] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 21)]
    classes_in_number_order = [p.parent.name for p in val]
    assert classes_in_number_order != sorted(classes_in_number_order), (
        "val numbers must not be grouped by class"
    )


def test_images_decode_at_size(bench):
    for split in bm.SPLITS:
        files = _files(bench / split)
        for path in files[:: max(1, len(files) // 5)]:
            with Image.open(path) as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64), path


def test_real_json_matches_val(bench):
    wnids = _lines(bench / "classes.txt")
    real = json.loads((bench / "real.json").read_text())
    val = sorted((bench / "val").rglob("*.JPEG"), key=lambda p: p.name)
    assert len(real) == len(val)
    for labels, path in zip(real, val, strict=True):
        assert all(isinstance(c, int) and 0 <= c < 20 for c in labels) and len(set(labels)) == len(labels)
        if labels:
            assert labels[0] == wnids.index(path.parent.name)


def test_real_label_statistics():
    """Over many train-domain scenes: ~4% deliberately ambiguous (no label), ~12% with a second object."""
    present = [natural(np.random.default_rng([7, i]), i % 20, 64, Domain())[1] for i in range(600)]
    empty = np.mean([not p for p in present])
    multi = np.mean([len(p) == 2 for p in present])
    assert 0.015 < empty < 0.07 and 0.07 < multi < 0.17
    assert all(p[0] == i % 20 and (len(p) == 1 or p[1] != p[0]) for i, p in enumerate(present) if p)


def test_imagenet_v2_layout(bench):
    for variant in ("matched-frequency", "threshold0.7", "top-images"):
        root = bench / f"imagenetv2-{variant}-format-val"
        folders = sorted(p.name for p in root.iterdir())
        assert sorted(int(f) for f in folders) == list(range(20)) and {"2", "10"} <= set(folders)
        for path in _files(root):
            assert re.fullmatch(r"[0-9a-f]{40}\.jpeg", path.name), path


def test_sketch_layout(bench):
    wnids = _lines(bench / "classes.txt")
    assert sorted(p.name for p in (bench / "sketch").iterdir()) == wnids
    assert all(re.fullmatch(r"sketch_\d+\.JPEG", p.name) for p in _files(bench / "sketch"))
    pixels = np.stack([np.asarray(Image.open(p), np.float32) for p in _files(bench / "sketch")])
    assert np.abs(pixels - pixels.mean(-1, keepdims=True)).max() < 12, "sketches are grey-scale"
    assert np.median(pixels) > 220, "sketches are dark lines on white"


@pytest.mark.parametrize("name", ["r", "a", "o"])
def test_subset_variants_and_index_files(bench, name):
    wnids = _lines(bench / "classes.txt")
    synsets = _lines(bench / f"imagenet_{name}_synsets.txt")
    indices = [int(i) for i in _lines(bench / f"imagenet_{name}_indices.txt")]
    assert len(synsets) == 10 and synsets == sorted(synsets)
    assert [wnids[i] for i in indices] == synsets
    assert sorted(p.name for p in (bench / f"imagenet-{name}").iterdir()) == synsets


def test_subsets_differ(bench):
    subsets = {n: set(_lines(bench / f"imagenet_{n}_synsets.txt")) for n in "rao"}
    assert subsets["r"] != subsets["a"] != subsets["o"] and subsets["r"] != subsets["o"]


def test_imagenet_c_layout(bench):
    val = {p.parent.name + "/" + p.name for p in (bench / "val").rglob("*.JPEG")}
    root = bench / "imagenet-c"
    assert sorted(p.name for p in root.iterdir()) == sorted(bm.CORRUPTIONS)
    for corruption in bm.CORRUPTIONS:
        assert sorted(p.name for p in (root / corruption).iterdir()) == ["1", "2", "3", "4", "5"]
        for severity in range(1, 6):
            files = {
                p.parent.name + "/" + p.name for p in (root / corruption / str(severity)).rglob("*.JPEG")
            }
            assert len(files) == 1 and files <= val
    clean = np.asarray(Image.open(bench / "val" / sorted(files)[0]), np.float32)
    noisy = [
        np.asarray(Image.open(root / "gaussian_noise" / str(s) / sorted(files)[0]), np.float32)
        for s in (1, 5)
    ]
    assert np.abs(noisy[1] - clean).mean() > np.abs(noisy[0] - clean).mean() > 1, (
        "severity must increase damage"
    )


def test_manifest_counts_and_hash(bench):
    manifest = json.loads((bench / "MANIFEST.json").read_text())
    assert manifest["version"] == bm.BENCHMARK_VERSION and manifest["seed"] == 0
    for split in bm.SPLITS:
        assert manifest["counts"][split] == len(_files(bench / split)) > 0
        assert manifest["seconds"][split] >= 0
    assert manifest["counts"]["train"] == 160 and manifest["counts"]["imagenet-c"] == 75
    assert bm.benchmark_hash(bench) == manifest["sha256"] == _sha256(bench)


def test_same_seed_same_bytes_any_worker_count(bench, tmp_path):
    again = bm.ensure_benchmark(tmp_path, seed=0, scale=SCALE, workers=1, progress=False)
    assert again != bench and bm.benchmark_hash(again) == bm.benchmark_hash(bench)


def test_seed_changes_images():
    first, _ = natural(np.random.default_rng([0, 1]), 3, 64, Domain())
    other, _ = natural(np.random.default_rng([1, 1]), 3, 64, Domain())
    same, _ = natural(np.random.default_rng([0, 1]), 3, 64, Domain())
    assert np.array_equal(first, same) and not np.array_equal(first, other)


def test_existing_benchmark_is_reused(bench):
    before = (bench / "MANIFEST.json").stat().st_mtime_ns
    assert bm.ensure_benchmark(bench.parent, seed=0, scale=SCALE, progress=False) == bench
    assert (bench / "MANIFEST.json").stat().st_mtime_ns == before


def test_cli_prints_path_and_counts(bench, capsys):
    bm.main(["--root", str(bench.parent), "--scale", str(SCALE)])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(bench) and "imagenet-c" in out and "MiB" in out


def test_two_processes_generate_once(tmp_path):
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO);"
        "from train.data.benchmark import ensure_benchmark;"
        f"print(ensure_benchmark(sys.argv[1], seed=3, scale={SCALE}, workers=1, progress=False))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode()[-2000:] for _, err in outputs]
    roots = {out.decode().strip() for out, _ in outputs}
    assert roots == {str(bm.benchmark_dir(tmp_path, seed=3, scale=SCALE))}
    assert sum(err.decode().count("generating benchmark") for _, err in outputs) == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        Path(roots.pop()).name
    ]


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing_natural(*args, **kwargs):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return natural(*args, **kwargs)

    monkeypatch.setattr(bm, "natural", failing_natural)
    with pytest.raises(KeyboardInterrupt):
        bm.ensure_benchmark(tmp_path, scale=SCALE, workers=1, progress=False)
    assert len(calls) == 6
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    with FileLock(str(next(tmp_path.glob("*.lock"))), timeout=0):
        pass


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(bm.CACHE_ENV, str(tmp_path))
    assert bm.benchmark_dir() == tmp_path / f"benchmark-v{bm.BENCHMARK_VERSION}-seed0"
    assert (
        bm.benchmark_dir(tmp_path / "x", seed=2, image_size=96)
        == tmp_path / "x" / f"benchmark-v{bm.BENCHMARK_VERSION}-seed2-px96"
    )


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"image_size": 16}, "image_size"), ({"seed": -1}, "seed"), ({"scale": 0}, "scale")]
)
def test_bad_arguments(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        bm.ensure_benchmark(tmp_path, progress=False, **kwargs)


def test_shapes_are_distinct_silhouettes():
    """No two silhouettes are near-duplicates; circle/hexagon (IoU 0.90) is the closest, fine-grained pair."""
    names = CLASS_SHAPES + OOD_SHAPES
    masks = np.stack([shape_mask(n, 64, (32, 32), 26) > 0.5 for n in names]).reshape(len(names), -1)
    assert masks.sum(1).min() > 150, "every shape covers a visible area"
    inter = (masks[:, None] & masks[None]).sum(-1)
    union = (masks[:, None] | masks[None]).sum(-1)
    iou = inter / union
    np.fill_diagonal(iou, 0)
    assert iou.max() < 0.92, (names[iou.argmax() // len(names)], names[iou.argmax() % len(names)])


def test_preferred_styles_are_unique_per_class():
    styles = [preferred_style(c) for c in range(NUM_CLASSES)]
    assert len(set(styles)) == NUM_CLASSES

"""Training data backends: DALI (CPU pipeline here) against the torchvision path, WebDataset shards
(writer round trip, equal-step streaming, exact evaluation), bad input, and tiny CLI trainings."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY, run_train
from torch.utils.data import DataLoader

from train.config import DataConfig
from train.data.dali import DaliTrainLoader
from train.data.datamodule import ImageNetDataModule, split_minival
from train.data.folder import DataLayoutError, ImageFolderDataset, scan_folder
from train.data.shards import ShardSets, ShardStream
from train.data.transforms import eval_transform, train_transform
from train.shards import default_sets, layout_of, write_shards

BENCH = DataConfig(image_size=32, scale=[0.35, 1.0], num_workers=2)  # conf/data/benchmark.yaml at 32 px


@pytest.fixture(scope="module")
def train_samples(bench_root: Path) -> list:
    classes = (bench_root / "classes.txt").read_text().split()
    return scan_folder(bench_root / "train", classes)[::4]  # 400 images, every class


@pytest.fixture(scope="module")
def shard_dir(bench_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    subprocess.run(
        [sys.executable, "-m", "train.shards", str(bench_root), str(out), "--shard-size", "300"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    return out


def dali_epoch(loader: DaliTrainLoader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, targets, index = zip(*((b[0], b[1], b[2]) for b in loader), strict=True)
    return torch.cat(images), torch.cat(targets), torch.cat(index)


def test_dali_cpu_pipeline_equals_torchvision_on_full_crops(train_samples):
    """Full-image crops without flips are deterministic: DALI's decode + resize must give the
    torchvision path's pixels for the same file, and the torchvision path's label."""
    cfg = replace(BENCH, scale=[1.0, 1.0], ratio=[1.0, 1.0], hflip=0.0)
    loader = DaliTrainLoader(train_samples, cfg, batch_size=32, seed=0)
    images, targets, index = dali_epoch(loader)
    assert len(loader) == len(train_samples) // 32 and images.shape == (len(loader) * 32, 3, 32, 32)
    assert images.dtype == torch.float32 and images.min() >= 0.0 and images.max() <= 1.0
    assert len(set(index.tolist())) == len(index)  # each file at most once per epoch
    reference = ImageFolderDataset(train_samples, train_transform(cfg))
    expected = torch.stack([reference[i][0] for i in index.tolist()])
    assert targets.tolist() == [reference[i][1] for i in index.tolist()]
    diff = (images - expected).abs()
    assert diff.mean() < 0.005 and diff.mean(dim=(1, 2, 3)).max() < 0.01, diff.mean()  # mismatch: ~0.26


def test_dali_random_crops_match_torchvision_statistics(train_samples):
    """With the benchmark's random crops and flips, per-channel pixel mean and std over an epoch
    agree with the torchvision path's; every rank of 3 runs the same number of steps."""
    loader = DaliTrainLoader(train_samples, BENCH, batch_size=32, seed=1)
    images, _, index = dali_epoch(loader)
    reference = ImageFolderDataset(train_samples, train_transform(BENCH))
    torch.manual_seed(0)
    expected = torch.stack([reference[i][0] for i in index.tolist()])
    for reduce in (torch.mean, torch.std):
        got, want = reduce(images, dim=(0, 2, 3)), reduce(expected, dim=(0, 2, 3))
        assert torch.allclose(got, want, atol=0.01), (reduce.__name__, got, want)
    ranks = [DaliTrainLoader(train_samples, BENCH, 16, rank, 3, seed=0) for rank in range(3)]
    assert [len(r) for r in ranks] == [len(train_samples) // 3 // 16] * 3
    seen = [dali_epoch(r)[2] for r in ranks]
    assert [len(s) for s in seen] == [len(ranks[0]) * 16] * 3
    assert len(set(torch.cat(seen).tolist())) == sum(len(s) for s in seen)  # disjoint shards
    assert ranks[0].dropped == len(train_samples) - 3 * len(ranks[0]) * 16


def test_dali_missing_falls_back_to_torchvision(bench_root, cache_dir):
    """Without an importable nvidia.dali, backend=dali warns once with the pip command and the
    torchvision loader is used."""
    script = (
        "import sys, logging; sys.modules['nvidia.dali'] = None\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from pathlib import Path\n"
        "from train.config import DataConfig\n"
        "from train.data.datamodule import ImageNetDataModule\n"
        f"data = ImageNetDataModule(DataConfig(root={str(bench_root)!r}, backend='dali', image_size=32,"
        f" batch_size=8, num_workers=0), Path({str(cache_dir)!r}))\n"
        "data.setup('fit'); loader = data.train_dataloader()\n"
        "print(type(loader).__name__, len(loader), next(iter(loader))[0].shape)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    n_train = len(
        split_minival(
            scan_folder(bench_root / "train", (bench_root / "classes.txt").read_text().split()), 0.01
        )[0]
    )
    assert proc.stdout.split()[:2] == ["DataLoader", str(n_train // 8)]
    assert "torch.Size([8, 3, 32, 32])" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "DALI is not installed" in line]
    assert len(warnings) == 1 and "pip install nvidia-dali-cuda130" in warnings[0]


def test_shard_writer_round_trip(bench_root, shard_dir):
    """Every file of every set is stored once, bytes unchanged, with its label and relative path;
    the evaluation reader lists the same samples as the folder scan and decodes the same pixels."""
    classes = (bench_root / "classes.txt").read_text().split()
    sets = ShardSets(shard_dir)
    assert sets.names == sorted(default_sets(bench_root)) and "imagenet-c" not in sets.names
    for name in sets.names:
        folder = bench_root / name
        expected = scan_folder(folder, classes, layout_of(name))
        stored: dict[str, tuple[bytes, int]] = {}
        for tar_path in sorted(shard_dir.glob(f"{name}-*.tar")):
            with tarfile.open(tar_path) as tar:
                files = {m.name: tar.extractfile(m).read() for m in tar}
            for key in {n.split(".", 1)[0] for n in files}:
                rel = files[f"{key}.path"].decode()
                assert rel not in stored, f"{rel} stored twice"
                stored[rel] = (files[f"{key}.jpg"], int(files[f"{key}.cls"]))
        assert sorted(stored) == sorted(s.path.relative_to(folder).as_posix() for s in expected)
        for sample in expected:
            data, label = stored[sample.path.relative_to(folder).as_posix()]
            assert data == sample.path.read_bytes() and label == sample.target
        manifest = sets.manifest(name)
        assert manifest["count"] == len(expected) == sum(s["count"] for s in manifest["shards"])
        read = sets.scan(sets.folder(name), classes, layout_of(name))
        assert [(s.path.relative_to(sets.folder(name)), s.target) for s in read] == [
            (s.path.relative_to(folder), s.target) for s in expected
        ]
    transform = eval_transform(BENCH)
    folder_val = ImageFolderDataset(scan_folder(bench_root / "val", classes), transform)
    shard_val = ImageFolderDataset(sets.scan(sets.folder("val"), classes), transform)
    for i in (0, len(folder_val) // 2, len(folder_val) - 1):
        assert torch.equal(folder_val[i][0], shard_val[i][0]) and folder_val[i][1] == shard_val[i][1]


def stream_epoch(stream: ShardStream, epoch: int, workers: int) -> list[int]:
    stream.epoch = epoch
    loader = DataLoader(stream, batch_size=stream.batch_size, drop_last=True, num_workers=workers)
    return [i for batch in loader for i in batch[2].tolist()]


def test_shard_stream_equal_steps_per_rank(bench_root, shard_dir):
    """Three ranks with two workers each: the same number of full batches per rank, no training
    image twice in an epoch, no minival image, targets from the folder scan, remainder counted."""
    classes = (bench_root / "classes.txt").read_text().split()
    sets = ShardSets(shard_dir)
    train, minival = split_minival(sets.scan(sets.folder("train"), classes), 0.05)
    folder_labels = {s.path.name: s.target for s in scan_folder(bench_root / "train", classes)}
    transform = train_transform(BENCH)
    streams = [ShardStream(train, transform, 16, rank, 3, seed=0) for rank in range(3)]
    steps = (len(train) // 3) // 16
    assert [len(DataLoader(s, batch_size=16, drop_last=True)) for s in streams] == [steps] * 3
    orders = []
    for epoch in (0, 1):
        per_rank = [stream_epoch(s, epoch, workers=2) for s in streams]
        assert [len(r) for r in per_rank] == [steps * 16] * 3
        seen = [i for r in per_rank for i in r]
        assert len(set(seen)) == len(seen)
        assert streams[0].dropped == len(train) - len(seen)
        orders.append(seen)
    assert orders[0] != orders[1] and stream_epoch(streams[0], 0, workers=2) == orders[0][: steps * 16]
    batch = next(iter(DataLoader(streams[0], batch_size=16)))
    assert batch[0].shape == (16, 3, 32, 32) and (batch[3] == -1).all()
    assert batch[1].tolist() == [folder_labels[train[i].path.name] for i in batch[2].tolist()]
    assert not {train[i].path for i in orders[0]} & {s.path for s in minival}


def test_bad_shard_input_gives_one_line_errors(bench_root, shard_dir, tmp_path, cache_dir):
    with pytest.raises(DataLayoutError, match=r"no shard manifest .*python -m train.shards"):
        ShardSets(tmp_path)
    with pytest.raises(DataLayoutError, match="written for 20 classes but the run uses 19.*data.classes"):
        ShardSets(shard_dir).check_classes("train", [f"n{i}" for i in range(19)])
    with pytest.raises(ValueError, match="data.backend='pil' is unknown"):
        ImageNetDataModule(DataConfig(root=str(bench_root), backend="pil"), cache_dir)
    with pytest.raises(ValueError, match="backend=dali reads image folders"):
        ImageNetDataModule(DataConfig(root=str(bench_root), backend="dali", shards=str(shard_dir)), cache_dir)
    with pytest.raises(ValueError, match="does not implement data.auto_augment"):
        DaliTrainLoader([], replace(BENCH, auto_augment="rand-m9-mstd0.5"), 8)
    proc = subprocess.run(
        [sys.executable, "-m", "train.shards", str(bench_root), str(tmp_path / "c"), "--split", "imagenet-c"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "keep it as a folder" in proc.stderr


CLEAN = ["eval=clean", "logger=csv", "trainer.limit_train_batches=2"]


def test_train_cli_with_dali_cpu(bench_root, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_train(
        [*TINY, *CLEAN, f"data.root={bench_root}", "data.backend=dali", f"hydra.run.dir={run_dir}"],
        REPO,
        cache_dir,
    )
    log = (run_dir / "__main__.log").read_text()
    assert "DALI is not installed" not in log and "steps per epoch per rank" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/imagenet/n"] == len(list((bench_root / "val").glob("*/*")))


def test_train_cli_from_shards(bench_root, shard_dir, cache_dir, tmp_path):
    """data=imagenet_wds on shards written from the benchmark: trains, and scores every sharded
    variant on exactly as many images as its folder holds."""
    run_dir = tmp_path / "run"
    run_train(
        [
            *TINY,
            *CLEAN,
            "data=imagenet_wds",
            f"data.shards={shard_dir}",
            f"data.classes={shard_dir / 'classes.txt'}",
            f"data.real_labels={shard_dir / 'real.json'}",
            "eval.strict=true",
            f"hydra.run.dir={run_dir}",
        ],
        REPO,
        cache_dir,
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/imagenet/n"] == len(list((bench_root / "val").glob("*/*")))
    for name in ("matched-frequency", "threshold0.7", "top-images"):
        folder = bench_root / f"imagenetv2-{name}-format-val"
        assert metrics[f"val/imagenetv2-{name}/n"] == len(list(folder.glob("*/*")))
    csv = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    column = csv[0].split(",").index("data/dropped_samples")
    dropped = {float(row.split(",")[column]) for row in csv[1:] if row.split(",")[column]}
    minival = json.loads((run_dir / "metrics.json").read_text())["val/minival/n"]
    n_train = len(list((bench_root / "train").glob("*/*"))) - minival
    assert dropped == {n_train - (n_train // 16) * 16}
    assert np.isfinite(metrics["val/imagenet/top1"])


def test_shard_stream_replaces_an_unreadable_image(bench_root, tmp_path):
    """A corrupt member keeps the batch count: it is reported in ``bad`` and replaced by a readable one."""
    classes = (bench_root / "classes.txt").read_text().split()
    for sample in scan_folder(bench_root / "train", classes)[::50]:
        target = tmp_path / "src" / "train" / sample.path.parent.name / sample.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sample.path.read_bytes())
    broken = sorted((tmp_path / "src" / "train").glob("*/*"))[5]
    broken.write_bytes(b"not a jpeg")
    (tmp_path / "src" / "classes.txt").write_text("\n".join(classes))
    write_shards(tmp_path / "src", tmp_path / "out", ["train"], shard_size=10, progress=False)
    sets = ShardSets(tmp_path / "out")
    samples = sets.scan(sets.folder("train"), classes)
    bad_index = next(i for i, s in enumerate(samples) if s.path.name == broken.name)
    batches = list(DataLoader(ShardStream(samples, train_transform(BENCH), 8), batch_size=8))
    assert len(samples) == 32 and len(batches) == 4 and all(b[0].shape[0] == 8 for b in batches)
    bad = torch.cat([b[3] for b in batches])
    index = torch.cat([b[2] for b in batches])
    assert bad[bad >= 0].tolist() == [bad_index] and bad_index not in index.tolist()

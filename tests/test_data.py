"""Folder datasets: layouts, label maps, natural order, bad files, clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo, create_transform

from evaluation.suite import load_real_labels
from train.config import DataConfig, error_line
from train.data.datamodule import ImageNetDataModule, find_split, load_classes
from train.data.folder import DataLayoutError, ImageFolderDataset, natural_key, scan_folder
from train.data.transforms import eval_transform, train_transform


def write_image(path: Path, value: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def test_natural_sort_orders_digit_runs_as_numbers():
    names = ["img10.png", "img2.png", "img1.png", "IMG3.png"]
    assert sorted(names, key=natural_key) == ["img1.png", "img2.png", "IMG3.png", "img10.png"]


def test_wnid_layout_labels_are_class_list_positions(tmp_path):
    classes = ["n01", "n02", "n03"]
    write_image(tmp_path / "n03" / "a.png", 30)
    write_image(tmp_path / "n01" / "b10.png", 10)
    write_image(tmp_path / "n01" / "b9.png", 9)
    samples = scan_folder(tmp_path, classes)
    assert [(s.path.name, s.target) for s in samples] == [("b9.png", 0), ("b10.png", 0), ("a.png", 2)]


def test_imagenet_classes_come_from_timm(tmp_path):
    classes = load_classes(DataConfig(name="imagenet", root=str(tmp_path)), tmp_path)
    assert classes == list(ImageNetInfo().label_names())
    assert len(classes) == 1000 and classes == sorted(classes)


def test_int_layout_maps_folder_numbers_not_strings(tmp_path):
    for k in (0, 1, 2, 10, 11):
        write_image(tmp_path / str(k) / "x.jpeg", k)
    wnids = [f"n{i:02d}" for i in range(12)]
    samples = scan_folder(tmp_path, wnids, layout="int")
    assert [s.target for s in samples] == [0, 1, 2, 10, 11]
    dataset = ImageFolderDataset(samples, eval_transform(DataConfig(image_size=8, crop_pct=1.0)))
    for i, sample in enumerate(samples):  # the pixel value written is the class number
        image, target, _, _ = dataset[i]
        assert target == sample.target and round(image[0, 0, 0].item() * 255) == target


def test_int_layout_maps_numbers_through_the_numbered_list_to_the_models_classes(tmp_path):
    """V2's folder i is the i-th ImageNet class: with data.classes in another order it lands on that wnid."""
    numbered = [f"n{i:02d}" for i in range(12)]
    for k in (0, 3, 11):
        write_image(tmp_path / str(k) / "x.jpeg", k)
    reordered = numbered[::-1]
    samples = scan_folder(tmp_path, reordered, layout="int", numbered=numbered)
    assert [reordered[s.target] for s in samples] == ["n00", "n03", "n11"]
    with pytest.raises(
        DataLayoutError, match="folder 11 holds class n11, which is not in the 11 classes of the model"
    ):
        scan_folder(tmp_path, numbered[:11], layout="int", numbered=numbered)
    with pytest.raises(DataLayoutError, match="has folder 11 but the int layout .* numbers only 4 classes"):
        scan_folder(tmp_path, numbered[:4], layout="int")


def test_hidden_folders_are_ignored(tmp_path):
    write_image(tmp_path / "n01" / "x.jpeg", 1)
    (tmp_path / ".ipynb_checkpoints").mkdir()
    assert [s.target for s in scan_folder(tmp_path, ["n01"])] == [0]


def test_numeric_folders_read_as_wnids_give_a_clear_error(tmp_path):
    write_image(tmp_path / "0" / "x.jpeg", 1)
    with pytest.raises(DataLayoutError, match="this looks like ImageNetV2; use layout 'int'"):
        scan_folder(tmp_path, ["n01"])


def test_missing_root_and_split_name_the_path_and_layout(tmp_path):
    with pytest.raises(
        DataLayoutError,
        match=rf"{tmp_path / 'nope'} does not exist; expected the layout <root>/<wnid>/<image>",
    ):
        scan_folder(tmp_path / "nope", ["n01"])
    with pytest.raises(DataLayoutError, match=r"has no val split \(looked for val, valid, validation"):
        find_split(tmp_path, "val")
    with pytest.raises(DataLayoutError, match="data.root=.* does not exist"):
        ImageNetDataModule(DataConfig(name="imagenet", root=str(tmp_path / "missing")), cache_dir=tmp_path)
    with pytest.raises(DataLayoutError, match="data=imagenet needs data.root="):
        ImageNetDataModule(DataConfig(name="imagenet"), cache_dir=tmp_path)


def test_empty_class_folder_is_warned(tmp_path, caplog):
    write_image(tmp_path / "n01" / "a.png", 1)
    (tmp_path / "n02").mkdir()
    with caplog.at_level(logging.WARNING):
        samples = scan_folder(tmp_path, ["n01", "n02"])
    assert len(samples) == 1
    assert any(
        "class folder" in r.message and "n02" in r.message and "empty" in r.message for r in caplog.records
    )


def test_unreadable_files_are_replaced_and_reported(tmp_path):
    write_image(tmp_path / "n01" / "a1.jpg", 10)
    good = tmp_path / "n01" / "a1.jpg"
    (tmp_path / "n01" / "a2.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 3])  # truncated
    (tmp_path / "n01" / "a3.jpg").write_text("not an image")
    write_image(tmp_path / "n01" / "a4.jpg", 40)
    dataset = ImageFolderDataset(
        scan_folder(tmp_path, ["n01"]), eval_transform(DataConfig(image_size=8, crop_pct=1.0))
    )
    items = [dataset[i] for i in range(len(dataset))]
    assert [item[3] for item in items] == [-1, 1, 2, -1]  # bad = the replaced file's index
    assert [item[2] for item in items] == [0, 3, 3, 3]  # replaced by the next readable file
    assert all(item[0].shape == (3, 8, 8) for item in items)


def test_a_worker_error_is_one_line_of_its_own_message(tmp_path):
    """torch re-raises a DataLoader worker's error with the worker's traceback in front of its message."""
    for name in ("a1.jpg", "a2.jpg"):
        (tmp_path / "n01").mkdir(exist_ok=True)
        (tmp_path / "n01" / name).write_text("not an image")
    samples = scan_folder(tmp_path, ["n01"])
    loader = torch.utils.data.DataLoader(ImageFolderDataset(samples, lambda x: x), num_workers=1)
    with pytest.raises(DataLayoutError) as raised:
        next(iter(loader))
    assert "Original Traceback" in str(raised.value)
    assert error_line(raised.value) == (
        f"no readable image among the 2 files of this set (e.g. {samples[0].path}); "
        "replace the files or leave the set out"
    )


def test_real_labels_follow_sorted_val_basenames(tmp_path):
    files = [
        tmp_path / "n02" / "ILSVRC2012_val_00000002.JPEG",
        tmp_path / "n01" / "ILSVRC2012_val_00000003.JPEG",
        tmp_path / "n01" / "ILSVRC2012_val_00000001.JPEG",
    ]
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[0], [], [1, 0]]))
    labels = load_real_labels(path, files)
    assert labels[:, :2].tolist() == [[-1, -1], [1, 0], [0, -1]]
    assert labels.shape == (3, 9) and labels.dtype == torch.long
    path.write_text(json.dumps([[0]]))
    with pytest.raises(DataLayoutError, match="has 1 label lists but the val split has 3 images"):
        load_real_labels(path, files)


def test_benchmark_datamodule_reads_generated_layout(bench_root, tmp_path):
    data = ImageNetDataModule(
        DataConfig(root=str(bench_root), image_size=32, minival_fraction=0.05), cache_dir=tmp_path
    )
    data.setup("fit")
    train_files = sorted((bench_root / "train").rglob("*.JPEG"))
    held = {s.path for s in data.minival_samples}
    assert len(data.train_samples) + len(held) == len(train_files) and not held & {
        s.path for s in data.train_samples
    }
    per_class = [sum(s.target == k for s in data.minival_samples) for k in range(20)]
    assert per_class == [
        round(0.05 * len(list((bench_root / "train" / w).iterdir()))) or 1 for w in data.classes
    ]
    assert data.classes == (bench_root / "classes.txt").read_text().split() and data.num_classes == 20
    image, _, _, bad = data.train_set[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0 and bad == -1


def test_auto_augment_fills_with_the_mean_colour_like_timm():
    """RandAugment's shear / rotate / translate fill: timm's own pipeline uses ImageNet's mean colour."""
    ours = train_transform(DataConfig(image_size=32, auto_augment="rand-m9-mstd0.5"))
    timms = create_transform(32, is_training=True, auto_augment="rand-m9-mstd0.5")

    def fill(pipeline) -> set:
        found = [t for t in pipeline.transforms if type(t).__name__ == "RandAugment"]
        return {op.hparams["img_mean"] for op in found[0].ops}

    assert fill(ours.transforms[0]) == fill(timms) == {(124, 116, 104)}
    image = ours(Image.new("RGB", (40, 40), (255, 0, 128)))
    assert (
        image.dtype == torch.float32 and image.shape == (3, 32, 32) and 0 <= image.min() <= image.max() <= 1
    )

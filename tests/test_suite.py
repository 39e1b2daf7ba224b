"""Which folders the evaluation suite reads, and how their labels map, on copies of the embedded benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from timm.data import ImageNetInfo

from evaluation.suite import VAL, build_suite, load_real_labels, subset_indices
from train.config import DataConfig
from train.data.datamodule import label_file_classes
from train.data.folder import DataLayoutError
from train.data.shards import ShardSets
from train.shards import write_shards


def classes_of(root: Path) -> list[str]:
    return (root / "classes.txt").read_text().split()


def suite_of(variants: list[str], root: Path, **kwargs):
    return build_suite(variants, root, classes_of(root), lambda x: x, "benchmark", **kwargs)


def test_imagenet_pointed_elsewhere_is_still_the_clean_val_read_once(bench_root: Path, tmp_path: Path):
    """Relative mCE and A / R's clean accuracy read the clean val source: redirecting imagenet keeps it."""
    val = tmp_path / "val"
    shutil.copytree(bench_root / "val", val)
    suite = suite_of(["imagenet", "imagenet-a"], bench_root, paths={"imagenet": str(val)})
    keys = [s.key for s in suite.sources]
    assert keys.count(VAL) == 1 and str(val) not in keys
    assert suite.source(VAL).dataset.samples[0].path.is_relative_to(val)
    assert [v.name for v in suite.source(VAL).variants] == ["imagenet"]


@pytest.mark.parametrize("stored", ["folders", "shards"])
def test_imagenet_o_wnids_come_from_its_folders_when_no_list_is_shipped(
    bench_root: Path, tmp_path: Path, stored: str
):
    """timm ships no imagenet_o_synsets.txt: the release's class folders are its classes (also in shards)."""
    root = tmp_path / "root"
    root.mkdir()
    for name in ("val", "imagenet-o", "classes.txt"):
        (root / name).symlink_to(bench_root / name)
    shards = None
    if stored == "shards":
        write_shards(root, tmp_path / "shards", ["val", "imagenet-o"], progress=False)
        (tmp_path / "shards" / "imagenet_o_synsets.txt").unlink(missing_ok=True)
        shards = ShardSets(tmp_path / "shards")
    suite = suite_of(["imagenet-o"], root, shards=shards, strict=True)
    shipped = sorted((bench_root / "imagenet_o_synsets.txt").read_text().split())
    assert suite.subsets["imagenet-o"].tolist() == [classes_of(bench_root).index(w) for w in shipped]
    assert len(
        suite.source(str(root / "imagenet-o") if shards is None else str(shards.folder("imagenet-o"))).dataset
    ) == len(list((bench_root / "imagenet-o").glob("*/*")))
    with pytest.raises(DataLayoutError, match="nowhere does not exist"):
        subset_indices("imagenet_o", root, classes_of(bench_root), root / "nowhere", None)


def test_imagenet_o_without_val_images_of_its_classes_is_skipped_before_any_pass(
    bench_root: Path, tmp_path: Path
):
    o_classes = set((bench_root / "imagenet_o_synsets.txt").read_text().split())
    val = tmp_path / "val"
    for folder in (bench_root / "val").iterdir():
        if folder.name not in o_classes:
            shutil.copytree(folder, val / folder.name)
    suite = suite_of(["imagenet", "imagenet-o"], bench_root, paths={"imagenet": str(val)})
    assert [v.name for s in suite.sources for v in s.variants] == ["imagenet"]
    assert len(suite.sources) == 1  # O's folder is not read for nothing
    assert suite_of(["imagenet-o"], bench_root, paths={"imagenet": str(val)}).sources == []  # nor val
    with pytest.raises(DataLayoutError, match="val has no images of its 10 classes"):
        suite_of(["imagenet-o"], bench_root, paths={"imagenet": str(val)}, strict=True)


def test_a_set_with_no_readable_image_is_skipped_before_any_pass(bench_root: Path, tmp_path: Path, caplog):
    unreadable = tmp_path / "imagenet-r"
    shutil.copytree(bench_root / "imagenet-r", unreadable)
    files = sorted(unreadable.rglob("*.*"))
    for path in files:
        path.write_text("this is not an image")
    paths = {"imagenet-r": str(unreadable)}
    suite = suite_of(["imagenet", "imagenet-r"], bench_root, paths=paths)
    assert [v.name for s in suite.sources for v in s.variants] == ["imagenet"]
    assert f"skipping variant imagenet-r: no readable image among the {len(files)} files" in caplog.text
    assert "1 of 2 eval.variants skipped: imagenet-r" in caplog.text
    with pytest.raises(
        DataLayoutError, match="no readable image .*eval.strict=true: point eval.paths.imagenet-r="
    ):
        suite_of(["imagenet-r"], bench_root, paths=paths, strict=True)
    files[-1].write_bytes(
        (bench_root / "imagenet-r").joinpath(files[-1].relative_to(unreadable)).read_bytes()
    )
    suite = suite_of(["imagenet-r"], bench_root, paths=paths, strict=True)  # one readable image is enough
    assert len(suite.source(str(unreadable)).dataset) == len(files)


def test_minival_is_read_only_when_asked_and_a_missing_train_split_skips_it(bench_root: Path):
    def no_train():
        raise DataLayoutError("no train split")

    suite = suite_of(["minival", "imagenet"], bench_root, minival=no_train)
    assert [v.name for s in suite.sources for v in s.variants] == ["imagenet"]
    suite = suite_of(["imagenet"], bench_root, minival=lambda: pytest.fail("minival read for nothing"))
    assert [s.key for s in suite.sources] == [VAL]


def test_v2_and_real_labels_follow_the_models_class_order(bench_root: Path):
    """data.classes in another order: V2's folder i and ReaL's index i still name the i-th class of the
    label files' list, at its position in the model's list."""
    numbered = classes_of(bench_root)
    reordered = numbered[::-1]
    variants = ["imagenet-real", "imagenetv2-top-images"]
    plain = build_suite(variants, bench_root, numbered, lambda x: x, "benchmark")
    moved = build_suite(variants, bench_root, reordered, lambda x: x, "benchmark", numbered=numbered)
    for a, b in zip(plain.sources, moved.sources, strict=True):
        assert [reordered[s.target] for s in b.dataset.samples] == [
            numbered[s.target] for s in a.dataset.samples
        ]
    labels, remapped = plain.source(VAL).extras["real_labels"], moved.source(VAL).extras["real_labels"]
    names = [[numbered[i] for i in row if i >= 0] for row in labels.tolist()]
    assert [[reordered[i] for i in row if i >= 0] for row in remapped.tolist()] == names


def test_real_labels_of_classes_the_model_lacks_are_dropped(tmp_path: Path):
    files = [tmp_path / f"ILSVRC2012_val_0000000{i}.JPEG" for i in (1, 2)]
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[0, 2], [1]]))
    labels = load_real_labels(path, files, remap=torch.tensor([1, -1, 0]))
    assert labels[:, :2].tolist() == [[1, 0], [-1, -1]]  # image 2's only class is not the model's: unscored


def test_real_labels_that_miss_the_models_classes_are_one_line(tmp_path: Path):
    files = [tmp_path / f"ILSVRC2012_val_0000000{i}.JPEG" for i in (1, 2)]
    path = tmp_path / "real.json"
    path.write_text(json.dumps([[0], [1]]))
    with pytest.raises(DataLayoutError, match="none of .*real.json's labels is among the model's classes"):
        load_real_labels(path, files, remap=torch.tensor([-1, -1]))
    with pytest.raises(DataLayoutError, match="names class 1 but the list its entries index .* has 1"):
        load_real_labels(path, files, remap=torch.tensor([0]))


def test_label_files_index_the_roots_class_list_else_imagenet_1k(tmp_path: Path):
    """Shards written from the benchmark carry its classes.txt: its real.json and V2 numbers index that list."""
    imagenet = DataConfig(name="imagenet")
    assert label_file_classes(imagenet, tmp_path) == list(ImageNetInfo("imagenet-1k").label_names())
    (tmp_path / "classes.txt").write_text("n02\nn01\n")
    assert label_file_classes(imagenet, tmp_path) == ["n02", "n01"]
    (tmp_path / "mine.txt").write_text("n01\n")
    assert label_file_classes(
        DataConfig(name="imagenet", label_classes=str(tmp_path / "mine.txt")), tmp_path
    ) == ["n01"]

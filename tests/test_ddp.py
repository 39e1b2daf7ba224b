"""Exact under DDP: two CPU processes (gloo) score sets of odd sizes exactly like one process, with
every image counted once (no padded duplicates), through ``python -m evaluation``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import random_weights
from test_evaluation_cli import run_eval

ODD = ("val", "imagenet-a", "imagenet-o")  # folders that lose one image


def link_tree(source: Path, target: Path, drop: Path | None = None) -> None:
    """Mirror ``source`` as folders of symlinked files, leaving out ``drop``."""
    for file in sorted(source.rglob("*")):
        if file.is_file() and file != drop:
            (target / file.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / file.relative_to(source)).symlink_to(file)


@pytest.fixture(scope="module")
def odd_root(bench_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small benchmark with one image fewer in val, ImageNet-A and ImageNet-O (and real.json
    without the removed val image's entry)."""
    root = tmp_path_factory.mktemp("odd") / "data"
    root.mkdir()
    for item in bench_root.iterdir():
        if item.name not in (*ODD, "real.json"):
            (root / item.name).symlink_to(item)
    for name in ODD:
        files = sorted(p for p in (bench_root / name).rglob("*") if p.is_file())
        link_tree(bench_root / name, root / name, drop=files[len(files) // 2])
        if name == "val":
            names = sorted(p.name for p in files)
            entries = json.loads((bench_root / "real.json").read_text())
            del entries[names.index(files[len(files) // 2].name)]
            (root / "real.json").write_text(json.dumps(entries))
    return root


def test_two_processes_score_odd_sets_exactly_like_one(odd_root: Path, tmp_path: Path, cache_dir: Path):
    weights = random_weights(tmp_path / "weights.pth")
    common = [
        "model.name=test_resnet",
        f"model.pretrained={weights}",
        "head=softmax",
        f"data.root={odd_root}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.eval_batch_size=16",
        "eval.variants=[minival,imagenet,imagenet-real,imagenet-a,imagenet-o]",
        "trainer.accelerator=cpu",
    ]
    scores = {}
    for devices, strategy in ((1, "auto"), (2, "ddp")):
        out = tmp_path / f"devices{devices}"
        run_eval([*common, f"trainer.devices={devices}", f"trainer.strategy={strategy}", f"output_dir={out}"],
                 tmp_path, cache_dir)  # fmt: skip
        scores[devices] = json.loads((out / "metrics.json").read_text())
    one, two = scores[1], scores[2]

    def count(name: str) -> int:
        return sum(1 for p in (odd_root / name).rglob("*") if p.is_file())

    assert count("val") % 2 == count("imagenet-a") % 2 == count("imagenet-o") % 2 == 1
    assert two["val/imagenet/n"] == count("val")
    assert two["val/imagenet-a/n"] == count("imagenet-a")
    assert two["val/imagenet-o/n"] == count("imagenet-o")
    real = json.loads((odd_root / "real.json").read_text())
    assert two["val/imagenet-real/n"] == sum(1 for labels in real if labels)
    assert set(two) == set(one) and len(one) > 40 and two.pop("experiment") == one.pop("experiment")
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    for key in (k for k in one if k.endswith(("/top1", "/top5", "/n", "/n_in", "/auroc"))):
        assert two[key] == one[key], key  # counts and rank statistics are exact

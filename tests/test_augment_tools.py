"""Built-in pretraining (cache, lock, public format, reconstruction), offline generation, preview and CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from test_augment_networks import one_thread  # noqa: F401  (autouse fixture)

import augment.pretrain
from augment import CAE, EDSR, DeepAugment, Noise2Net
from augment.__main__ import main
from augment.base import has_fast_bf16
from augment.generate import _seed, generate, shard_files
from augment.images import list_images, load_images, resized_shape
from augment.networks.edsr import downscale
from augment.pretrain import ensure_pretrained, psnr, read_report
from augment.preview import preview
from train.augmentation import preview_columns, write_preview
from train.config import DataConfig
from train.data.datamodule import ImageNetDataModule
from train.data.folder import DataLayoutError

BUDGET_S = 10.0  # test pretraining: 6 s EDSR + 4 s CAE at 32 px
# Reconstruction tolerances reached with that budget (all perturbations off, held-out photo crops):
EDSR_VS_BICUBIC_DB = -1.0  # the EDSR starts as a least-squares linear upsampler, close to bicubic
CAE_MIN_PSNR_DB = 10.0  # a few CAE steps; an untrained CAE gives ~5-8 dB on these crops
# Inside the outer 4 px ring (the decoder's unpadded 3x3 convs drop the code's outer ring of cells, which a
# short pretraining leaves near mid-grey: 44% of a 32 px image) the CAE starts at 21.6 dB on the val crops and
# measured 18.3-21.9 dB after 11-335 steps (its first steps trade the interior for the ring), a flat colour 16.7 dB.
CAE_INTERIOR_OVER_FLAT_DB = 0.5


def write_photo_crops(root: Path, classes: int = 3, per_class: int = 6, seed: int = 0) -> None:
    """ImageNet layout ``root/<wnid>/<wnid>_<i>.JPEG``: random crops of scikit-image photos, mixed sizes."""
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            photo = photos[(c + i) % len(photos)]
            h, w = int(rng.integers(36, 64)), int(rng.integers(36, 64))
            top, left = rng.integers(0, photo.shape[0] - 3 * h), rng.integers(0, photo.shape[1] - 3 * w)
            crop = Image.fromarray(photo[top : top + 3 * h, left : left + 3 * w]).resize(
                (w, h), Image.BICUBIC
            )
            crop.save(folder / f"n{c:08d}_{i}.JPEG", quality=95)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    write_photo_crops(root / "train")
    write_photo_crops(root / "val", classes=3, per_class=2, seed=1)
    return root


@pytest.fixture(scope="module")
def pretrained(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cache = tmp_path_factory.mktemp("cache")
    return ensure_pretrained(image_root / "train", cache, image_size=32, budget_s=BUDGET_S, progress=False)


def test_pretraining_writes_public_format_checkpoints_and_a_report(pretrained):
    assert pretrained["edsr"].name == "edsr_baseline_x4.pt" and pretrained["cae"].name == "model_final.state"
    EDSR().load_state_dict(torch.load(pretrained["edsr"], weights_only=True), strict=True)
    CAE().load_state_dict(torch.load(pretrained["cae"], weights_only=True), strict=True)
    report = read_report(pretrained)
    assert report["edsr_steps"] >= 1 and report["cae_steps"] >= 1 and report["budget_s"] == BUDGET_S
    assert report["edsr_gain_db"] == pytest.approx(report["edsr_psnr"] - report["bicubic_psnr"])
    assert report["images"] + report["holdout_images"] == 18
    assert report["edsr_gain_db"] > EDSR_VS_BICUBIC_DB and report["cae_psnr"] > CAE_MIN_PSNR_DB
    # EDSR trains for its whole share unless it reached the target first
    share = augment.pretrain.EDSR_SHARE * BUDGET_S
    assert report["edsr_seconds"] >= share or report["edsr_gain_db"] >= report["target_gain_db"]


def test_edsr_training_stops_once_its_held_out_target_is_reached(image_root):
    images = load_images(list_images(image_root / "train"), 32)
    budget = 4.0
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    edsr, _, report = augment.pretrain.pretrain(
        images, budget, target_gain_db=-100.0, check_every_s=0.5, progress=False
    )
    assert torch.equal(torch.get_rng_state(), rng)  # a cold cache does not shift the run's seeded draws
    assert report["edsr_seconds"] < 0.5 * augment.pretrain.EDSR_SHARE * budget and report["edsr_steps"] >= 1
    hold = images[-report["holdout_images"] :].float() / 255
    bicubic = F.interpolate(downscale(hold), size=(32, 32), mode="bicubic").clamp(0, 1)
    with torch.no_grad():
        gain = psnr(edsr(downscale(hold)).clamp(0, 1), hold) - psnr(bicubic, hold)
    assert gain == pytest.approx(report["edsr_gain_db"], abs=1e-3)  # the returned network is the checked one


def test_bf16_pretraining_returns_float32_public_weights_and_bad_precision_is_refused(image_root, tmp_path):
    images = load_images(list_images(image_root / "train"), 32)
    edsr, cae, report = augment.pretrain.pretrain(images, 2.0, precision="bf16", progress=False)
    assert report["precision"] == "bf16" and report["edsr_steps"] >= 1 and report["cae_steps"] >= 1
    for net in (edsr, cae):
        for name, tensor in net.state_dict().items():
            assert tensor.dtype == torch.float32 and tensor.is_contiguous(), name
    report = read_report(ensure_pretrained(image_root / "train", tmp_path, 32, 1.0, progress=False))
    assert report["precision"] == ("bf16" if has_fast_bf16(torch.device("cpu")) else "fp32")  # "auto"
    with pytest.raises(ValueError, match="precision must be one of"):
        ensure_pretrained(image_root / "train", tmp_path, 32, 1.0, precision="fp16")


def test_identity_when_all_perturbations_are_off(pretrained, image_root):
    x = load_images(list_images(image_root / "val"), 32).float() / 255
    off = {"edsr_weight_options": (), "edsr_pre_options": (), "edsr_body_options": ()}
    off |= {"cae_weight_options": (), "cae_latent_options": ()}
    weights = {"edsr_weights": str(pretrained["edsr"]), "cae_weights": str(pretrained["cae"])}
    edsr = DeepAugment(**weights, p_edsr=1.0, p_cae=0.0, **off)(x)
    bicubic = F.interpolate(downscale(x), size=(32, 32), mode="bicubic").clamp(0, 1)
    assert psnr(edsr, x) > psnr(bicubic, x) + EDSR_VS_BICUBIC_DB
    cae = DeepAugment(**weights, p_edsr=0.0, p_cae=1.0, **off)(x)
    assert psnr(cae, x) > CAE_MIN_PSNR_DB
    flat = x.mean((2, 3), keepdim=True).expand_as(x)
    assert psnr(cae, x) > psnr(flat, x) - 3  # the whole image, ring included: not far under a flat colour
    inside = (..., slice(4, -4), slice(4, -4))
    assert psnr(cae[inside], x[inside]) > psnr(flat[inside], x[inside]) + CAE_INTERIOR_OVER_FLAT_DB


def test_cache_hit_new_key_for_new_data_and_one_training_under_concurrency(
    pretrained, image_root, tmp_path, monkeypatch
):
    stamp = pretrained["edsr"].stat().st_mtime_ns
    cache = pretrained["edsr"].parent.parent
    again = ensure_pretrained(image_root / "train", cache, image_size=32, budget_s=BUDGET_S, progress=False)
    assert again == pretrained and pretrained["edsr"].stat().st_mtime_ns == stamp

    calls = []
    real = augment.pretrain.pretrain
    monkeypatch.setattr(augment.pretrain, "pretrain", lambda *a, **k: calls.append(1) or real(*a, **k))
    other = tmp_path / "other"
    write_photo_crops(other, classes=2, per_class=4, seed=5)
    results = []

    def call() -> None:
        results.append(ensure_pretrained(other, cache, image_size=32, budget_s=1.0, progress=False))

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (
        len(calls) == 1
        and results[0] == results[1]
        and results[0]["edsr"].parent != pretrained["edsr"].parent
    )
    assert not list(results[0]["edsr"].parent.glob("*.tmp"))


def test_generate_shards_resumes_and_writes_reference_layout(pretrained, image_root, tmp_path):
    weights = {"edsr_weights": str(pretrained["edsr"]), "cae_weights": str(pretrained["cae"])}
    files = list_images(image_root / "train")
    halves = [shard_files(files, i, 2, "class") for i in range(2)]
    assert sorted(halves[0] + halves[1]) == files and not set(halves[0]) & set(halves[1])
    assert {f.parent.name for f in halves[0]}.isdisjoint({f.parent.name for f in halves[1]})
    assert resized_shape(50, 52, 16) == (16, 16) and resized_shape(40, 61, 16) == (16, 24)
    by_file = [shard_files(files, i, 3, "file") for i in range(3)]
    assert sorted(f for shard in by_file for f in shard) == files

    out = tmp_path / "out"
    kwargs = {"size": 16, "batch_size": 4, "workers": 0, "progress": False, **weights}
    for i in range(2):
        assert generate(image_root, out, shard=i, num_shards=2, **kwargs) == {
            "written": len(halves[i]),
            "skipped": 0,
            "unreadable": 0,
        }
    for f in files:
        for d in ("EDSR", "CAE"):
            with Image.open(out / d / f.parent.name / f.name) as img, Image.open(f) as src:
                assert img.format == "JPEG" and img.size[::-1] == resized_shape(src.height, src.width, 16)
    assert not list(out.rglob("*.tmp"))
    assert generate(image_root, out, shard=0, num_shards=2, **kwargs) == {
        "written": 0,
        "skipped": len(halves[0]),
        "unreadable": 0,
    }
    (out / "CAE" / halves[1][0].parent.name / halves[1][0].name).unlink()
    assert generate(image_root, out, shard=1, num_shards=2, **kwargs)["written"] == 1
    with pytest.raises(ValueError, match="size=16 there, 20 now"):  # one folder never mixes two settings
        generate(image_root, out, **{**kwargs, "size": 20})
    copy = tmp_path / "elsewhere" / "edsr_baseline_x4.pt"  # the same network under another path is the same
    copy.parent.mkdir()
    shutil.copy(weights["edsr_weights"], copy)
    assert generate(image_root, out, **{**kwargs, "edsr_weights": str(copy)})["written"] == 0
    other = EDSR().state_dict()  # other weights under that path (a node that pretrained its own): refused
    torch.save(other, copy)
    with pytest.raises(ValueError, match="edsr_weights_sha256="):
        generate(image_root, out, **{**kwargs, "edsr_weights": str(copy)})
    manifest = json.loads((out / "generate.json").read_text())
    assert manifest["edsr_weights"] == str(pretrained["edsr"].resolve())  # recorded, not compared
    assert manifest["cae_weights_sha256"] == hashlib.sha256(pretrained["cae"].read_bytes()).hexdigest()
    mode = 0o666 & ~_umask()  # what open() gives, so that shared datasets are readable by others
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.rglob("*") if f.is_file()} == {mode}
    with pytest.raises(ValueError, match="size must be a multiple of 4 and >= 12"):
        generate(image_root, tmp_path / "small", **{**kwargs, "size": 8})


def test_generated_folders_join_the_training_set_without_copies_of_minival_images(
    pretrained, image_root, tmp_path
):
    """data.extra_train=[<out>/EDSR,<out>/CAE] trains on the reference's three copies of ImageNet (clean, EDSR,
    CAE); the copies of images held out as minival stay out of training."""
    weights = {"edsr_weights": str(pretrained["edsr"]), "cae_weights": str(pretrained["cae"])}
    out = tmp_path / "out"
    generate(image_root, out, size=16, batch_size=4, workers=0, progress=False, **weights)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(sorted(p.name for p in (image_root / "train").iterdir())))
    plain = {"name": "imagenet", "root": str(image_root), "classes": str(classes), "minival_fraction": 0.2}
    base, minival = ImageNetDataModule(DataConfig(**plain, image_size=16), tmp_path).split
    extra = [str(out / "EDSR"), str(out / "CAE")]
    data = ImageNetDataModule(DataConfig(**plain, image_size=16, extra_train=extra), tmp_path)
    train, minival_too = data.split
    assert minival_too == minival and train[: len(base)] == base and len(minival) >= 3
    added = train[len(base) :]
    assert len(added) == 2 * len(base)  # every training image once per folder, no minival image
    label = {(s.path.parent.name, s.path.name): s.target for s in base}
    assert all(label[(s.path.parent.name, s.path.name)] == s.target for s in added)
    assert {s.path.parents[1] for s in added} == {out / "EDSR", out / "CAE"}
    data.setup("fit")
    image, target, *_ = data.train_set[len(base)]  # a generated file decodes through the training transform
    assert image.shape == (3, 16, 16) and target == added[0].target
    with pytest.raises(DataLayoutError, match="nope does not exist"):
        ImageNetDataModule(DataConfig(**plain, extra_train=[str(tmp_path / "nope")]), tmp_path).split  # noqa: B018
    with pytest.raises(ValueError, match="data.extra_train adds image folders"):
        ImageNetDataModule(DataConfig(**plain, extra_train=extra, shards=str(tmp_path)), tmp_path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_generate_skips_and_names_unreadable_images(pretrained, image_root, tmp_path, caplog):
    weights = {"edsr_weights": str(pretrained["edsr"]), "cae_weights": str(pretrained["cae"])}
    root = tmp_path / "root"
    good = list_images(image_root / "train")[:2]
    for f in good:
        (root / "train" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / "train" / f.parent.name / f.name)
    broken = root / "train" / good[0].parent.name / "broken.JPEG"
    broken.write_bytes(good[0].read_bytes()[:200])  # a truncated JPEG
    kwargs = {"size": 16, "batch_size": 4, "workers": 0, "progress": False, **weights}
    with caplog.at_level(logging.WARNING, logger="augment.generate"):
        result = generate(root, tmp_path / "out", **kwargs)
    assert result == {"written": 2, "skipped": 0, "unreadable": 1}
    assert (
        "broken.JPEG" in caplog.text
        and not (tmp_path / "out" / "EDSR" / broken.parent.name / broken.name).exists()
    )
    assert _seed(1, 0, "EDSR") != _seed(0, 1, "EDSR") != _seed(0, 1, "CAE")  # distinct streams per shard


def test_a_runs_preview_shows_its_own_augmentations_with_its_settings(pretrained, tmp_path):
    """The grid a training run writes at its start: clean, then one column per augmentation the run
    configures (a route it never takes left out), each equal to that augmentation built independently
    with the run's settings on every image."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    weights = {"edsr_weights": str(pretrained["edsr"]), "cae_weights": str(pretrained["cae"])}
    noise2net = {"_target_": "augment.Noise2Net", "p": 0.5, "max_eps": 0.3, "seed": 5}
    cae_only = {
        "_target_": "augment.DeepAugment",
        **weights,
        "p_edsr": 0.0,
        "p_cae": 0.5,
        "cae_size": 16,
        "seed": 3,
    }
    expected = {
        "clean": images,
        "CAE": DeepAugment(**weights, p_edsr=0.0, p_cae=1.0, cae_size=16, images_per_network=1, seed=3)(
            images
        ),
        "Noise2Net": Noise2Net(p=1.0, max_eps=0.3, seed=5)(images),
    }
    configs = {
        ("clean", "Noise2Net"): noise2net,
        ("clean", "CAE", "Noise2Net"): {
            "_target_": "train.augmentation.Chain",
            "steps": [cae_only, noise2net],
        },
    }
    for names, cfg in configs.items():
        path = write_preview(OmegaConf.create(cfg), images, tmp_path / "preview.png")
        with Image.open(path) as img:
            grid = np.asarray(img.convert("RGB")).astype(int)
        assert grid.shape == (16 + 2 * 128, len(names) * 128, 3)
        for j, name in enumerate(names):  # 32 px images drawn in 128 px cells: every 4th pixel is one pixel
            cells = grid[16:, j * 128 : (j + 1) * 128][::4, ::4]
            want = (expected[name].clamp(0, 1) * 255).round().permute(0, 2, 3, 1).reshape(64, 32, 3)
            assert np.array_equal(cells, want.numpy().astype(int)), name
    assert write_preview(OmegaConf.create({}), images, tmp_path / "none.png") is None
    twice = {"_target_": "train.augmentation.Chain", "steps": [noise2net, {**noise2net, "max_eps": 0.1}]}
    assert list(preview_columns(OmegaConf.create(twice))) == ["Noise2Net", "Noise2Net 2"]


def test_preview_grid_and_cli(pretrained, image_root, tmp_path, capsys):
    weights = [f"edsr_weights={pretrained['edsr']}", f"cae_weights={pretrained['cae']}"]
    out = preview(
        image_root, tmp_path / "p.png", str(pretrained["edsr"]), str(pretrained["cae"]), n=3, cell=32
    )
    with Image.open(out) as img:
        assert img.size == (4 * 32, 3 * 32 + 16)  # clean | EDSR | CAE | Noise2Net
        grid = np.asarray(img.convert("RGB"))
    first = load_images(list_images(image_root / "train")[:1], 64)[0].permute(1, 2, 0).numpy()
    assert np.abs(grid[16:48, :32].astype(int) - first[::2, ::2].astype(int)).max() <= 1  # clean column
    main(["preview", f"data.root={image_root}", f"out={tmp_path / 'cli.png'}", "n=2", "cell=16", *weights])
    assert (tmp_path / "cli.png").is_file()
    sized = ["edsr_size=32", "cae_size=32"]  # the working sizes reach the grid: other EDSR and CAE columns
    main(
        [
            "preview",
            f"data.root={image_root}",
            f"out={tmp_path / 's.png'}",
            "n=2",
            "cell=16",
            *weights,
            *sized,
        ]
    )
    main(["preview", f"data.root={image_root}", f"out={tmp_path / 'd.png'}", "n=2", "cell=16", *weights])
    with Image.open(tmp_path / "s.png") as a, Image.open(tmp_path / "d.png") as b:
        sized_grid, default_grid = (np.asarray(img.convert("RGB")).astype(int) for img in (a, b))
    assert np.array_equal(sized_grid[:, :16], default_grid[:, :16])  # clean column
    for column in (1, 2):  # EDSR, CAE
        cells = np.s_[16:, 16 * column : 16 * (column + 1)]
        assert np.abs(sized_grid[cells] - default_grid[cells]).mean() > 1
    with pytest.raises(SystemExit, match="unknown argument"):
        main(["preview", "colour=red"])
    bad = {  # one line naming the argument and the fix, before any pretraining or data loading
        "size='abc' is not a valid int": ["generate", "out=x", "size=abc"],
        "out= needs a value": ["generate", "out="],
        "generate: size must be a multiple of 4 and >= 12": ["generate", "out=x", "size=8"],
        "preview: need n, cell and image_size >= 1": ["preview", "out=x.png", "n=0"],
        "preview: out=x needs an image suffix": ["preview", "out=x"],
        "preview: edsr_weights file not found": [
            "preview",
            f"out={tmp_path / 'e.png'}",
            "edsr_weights=nope.pt",
        ],
    }
    for message, argv in bad.items():
        with pytest.raises(SystemExit, match=re.escape(message)):
            main([*argv, f"data.root={image_root}", *weights[1:]])
    main(["generate", "--help"])
    assert "python -m augment generate data.root=<root> out=<dir>" in capsys.readouterr().out

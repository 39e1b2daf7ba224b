"""``python -m evaluation``: a training run's checkpoint scores exactly as the run did; results.csv in
timm's format; saved logits re-score (numpy/sklearn) to the same metrics; timm weights files; bad
input stops with one line."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from conftest import TINY, cli_env, random_weights, run_train
from PIL import Image
from sklearn.metrics import roc_auc_score

from evaluation.__main__ import main
from evaluation.compare.sources import SourceError, load_runs, offline_folders, offline_record
from evaluation.config import compose_config
from evaluation.suite import C_NAMES
from train.data.folder import scan_folder

VARIANTS = (
    "minival",
    "imagenet",
    "imagenet-real",
    "imagenetv2-threshold0.7",
    "imagenet-a",
    "imagenet-r",
    "imagenet-o",
    "imagenet-c",
    "imagenet-c-gen",
    "imagenet-p",
)
C_SUBSET = ("brightness", "contrast", "fog", "frost", "pixelate", "snow")  # 240 images: more than val's 200


def run_eval(args: list[str], cwd: Path, cache_dir: Path) -> subprocess.CompletedProcess:
    """``python -m evaluation <args>`` in a subprocess, as a user types it."""
    proc = subprocess.run(
        [sys.executable, "-m", "evaluation", "trainer.enable_progress_bar=false", *args],
        cwd=cwd,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"python -m evaluation failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, bench_root: Path, cache_dir: Path) -> Path:
    """A tiny sigmoid-head training scored on most variants (ImageNet-C from disk: six corruptions;
    generated: the full grid on one val image). Its epoch reads at most 200 images per source:
    every source in full but ImageNet-C, so its final evaluation carries over the epoch's outputs
    of all sources but val and C, and ImageNet-P's scores."""
    tmp = tmp_path_factory.mktemp("evalcli")
    corruptions = tmp / "imagenet-c"
    corruptions.mkdir()
    for name in C_SUBSET:
        (corruptions / name).symlink_to(bench_root / "imagenet-c" / name)
    run = tmp / "run"
    run_train(
        [
            "experiment=sigmoid_baseline",
            *TINY,
            f"data.root={bench_root}",
            "logger=none",
            f"eval.variants=[{','.join(VARIANTS)}]",
            f"+eval.paths.imagenet-c={corruptions}",
            "eval.max_images=200",
            "eval.c_grid_images=1",
            f"hydra.run.dir={run}",
        ],
        tmp,
        cache_dir,
    )
    return run


@pytest.fixture(scope="module")
def evaluated(run_dir: Path, cache_dir: Path) -> Path:
    out = run_dir.parent / "eval"
    proc = run_eval(
        [f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", "save_logits=true", f"output_dir={out}"],
        run_dir.parent,
        cache_dir,
    )
    assert f"output directory: {out}" in proc.stdout
    return out


def test_checkpoint_reproduces_the_training_runs_final_metrics(run_dir: Path, evaluated: Path):
    """The evaluation program reads every source; the training run's final evaluation read val and
    ImageNet-C only and carried the rest over from its last epoch: the same metrics either way."""
    log = (run_dir / "__main__.log").read_text()
    read = log.split("final evaluation: ", 1)[1].splitlines()[0].split("; reading ")[1]
    assert set(read.split(", ")) == {"imagenet", "imagenet-real", "imagenet-c-gen", "imagenet-c"}
    trained = json.loads((run_dir / "metrics.json").read_text())
    scored = json.loads((evaluated / "metrics.json").read_text())
    assert set(scored) == set(trained) and len(trained) > 50
    for key, value in trained.items():
        assert scored[key] == value or (math.isnan(value) and math.isnan(scored[key])), key
    assert scored["experiment"] == "sigmoid_baseline"
    assert {k.split("/")[1] for k in scored if k.startswith("val/")} == set(VARIANTS)
    assert (evaluated / "results.csv").read_text() == (run_dir / "results.csv").read_text()
    history = pd.read_csv(evaluated / "history.csv")
    assert set(history.phase) == {"final"} and set(history.variant) == set(VARIANTS)
    plots = {p.name for p in (evaluated / "plots").iterdir()}
    assert {"reliability_final.png", "imagenet-o_confidence_final.png"} <= plots  # as training writes them


def test_wandb_evaluation_run_is_job_type_eval_in_the_runs_group(run_dir: Path, cache_dir: Path):
    out = run_dir.parent / "eval_wandb"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    args = [
        f"checkpoint={checkpoint}",
        "eval=clean",
        "logger=wandb",
        "logger.mode=offline",
        f"output_dir={out}",
    ]
    run_eval(args, run_dir.parent, cache_dir)
    (folders,) = offline_folders(out / "wandb").values()
    record = offline_record(folders)  # read back with `wandb leet inspect`, no server
    assert record["job_type"] == "eval" and record["group"] == "sigmoid_baseline"
    assert {"eval", "head:sigmoid", "augment:none", "sigmoid_baseline"} <= set(record["tags"])
    scored = json.loads((out / "metrics.json").read_text())
    keys = [k for k in scored if k.startswith("val/") and k.endswith("/top1")]
    assert "val/imagenet/top1" in keys
    for key in keys:
        assert record["summary"][key] == pytest.approx(scored[key]), key
    with pytest.raises(SourceError, match="is a `python -m evaluation` W&B run"):  # training runs only
        load_runs([str(out / "wandb")])


def test_results_csv_has_timms_columns_and_diffs(evaluated: Path):
    metrics = json.loads((evaluated / "metrics.json").read_text())
    table = pd.read_csv(evaluated / "results.csv", dtype={"top1_diff": str, "top5_diff": str}).set_index(
        "variant"
    )
    assert list(table.columns)[:9] == [
        "model", "top1", "top1_err", "top5", "top5_err", "param_count", "img_size", "crop_pct", "interpolation",
    ]  # fmt: skip
    assert {"top1_diff", "top5_diff"} <= set(table.columns)
    assert set(table.index) == set(VARIANTS) - {"imagenet-o", "imagenet-p"}  # O and P have no accuracy
    params = sum(p.numel() for p in timm.create_model("test_resnet", num_classes=20).parameters())
    row = table.loc["imagenet"]
    assert row.model == "test_resnet.sigmoid_baseline" and row.param_count == round(params / 1e6, 2)
    assert (row.img_size, row.crop_pct, row.interpolation) == (32, 1.0, "bilinear")
    for variant, row in table.iterrows():
        assert row.top1 == pytest.approx(metrics[f"val/{variant}/top1"], abs=5e-4)
        assert row.top1 + row.top1_err == pytest.approx(100.0, abs=1e-3)
    assert math.isnan(table.loc["imagenet-c", "top5"])  # C reports top-1 only

    def diff(a: float, b: float) -> str:
        return f"{'+' if a - b >= 0 else '-'}{abs(a - b):.3f}"

    for variant in ("imagenet-real", "imagenetv2-threshold0.7"):
        for k in ("top1", "top5"):
            expected = diff(metrics[f"val/{variant}/{k}"], metrics[f"val/imagenet/{k}"])
            assert table.loc[variant, f"{k}_diff"] == expected
    for variant in ("imagenet-a", "imagenet-r"):  # base: val images of the same 200 (here 10) classes
        for k in ("top1", "top5"):
            expected = diff(metrics[f"val/{variant}/{k}"], metrics[f"val/{variant}/clean_{k}"])
            assert table.loc[variant, f"{k}_diff"] == expected
    for variant in ("minival", "imagenet", "imagenet-c"):  # no base set
        assert pd.isna(table.loc[variant, "top1_diff"])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x.astype(np.float64)))


def test_saved_logits_rescore_to_the_same_metrics(evaluated: Path, bench_root: Path):
    m = json.loads((evaluated / "metrics.json").read_text())
    files = {p.stem: dict(np.load(p)) for p in (evaluated / "logits").glob("*.npz")}
    generated = {"imagenet-c-gen", "imagenet-p"}  # made from val on the fly: no logits kept
    assert set(files) == set(VARIANTS) - generated
    for name, f in files.items():
        assert f["logits"].dtype == np.float32 and f["logits"].shape[1] == 20, name
        assert len(f["target"]) == len(f["logits"]) == len(f["index"]), name

    val = files["imagenet"]
    assert 100 * np.mean(val["logits"].argmax(1) == val["target"]) == pytest.approx(m["val/imagenet/top1"])
    assert len(val["target"]) == m["val/imagenet/n"] == len(list((bench_root / "val").rglob("*.JPEG")))

    real = files["imagenet-real"]  # label sets from real.json, matched by file name
    entries = json.loads((bench_root / "real.json").read_text())
    classes = (bench_root / "classes.txt").read_text().split()
    samples = scan_folder(bench_root / "val", classes)
    by_name = dict(zip(sorted(s.path.name for s in samples), entries, strict=True))
    for row, i in enumerate(real["index"]):
        labels = real["real_labels"][row]
        assert sorted(labels[labels >= 0]) == sorted(by_name[samples[i].path.name])
    scored = (real["real_labels"] >= 0).any(1)
    hit = (real["real_labels"] == real["logits"].argmax(1)[:, None]).any(1)
    assert 100 * hit[scored].mean() == pytest.approx(m["val/imagenet-real/top1"])

    for name in ("imagenet-a", "imagenet-r"):
        f = files[name]
        listed = [int(x) for x in (bench_root / f"{name.replace('-', '_')}_indices.txt").read_text().split()]
        assert f["class_indices"].tolist() == listed
        top1 = 100 * np.mean(f["logits"][:, f["class_indices"]].argmax(1) == f["target"])
        assert top1 == pytest.approx(m[f"val/{name}/top1"])

    o = files["imagenet-o"]  # anomalies positive, score = -(max sigmoid probability over O's classes)
    inside = o["in_distribution"]
    assert inside.sum() == m["val/imagenet-o/n_in"] and (~inside).sum() == m["val/imagenet-o/n"]
    assert (o["target"][~inside] == -1).all() and (o["target"][inside] >= 0).all()
    confidence = sigmoid(o["logits"][:, o["class_indices"]]).max(1)
    assert roc_auc_score(~inside, -confidence) == pytest.approx(m["val/imagenet-o/auroc"], abs=1e-9)

    c = files["imagenet-c"]
    assert sorted({str(c["corruption_names"][i]) for i in c["corruption"]}) == list(C_SUBSET)
    wrong = c["logits"].argmax(1) != c["target"]
    for i in np.unique(c["corruption"]):
        for s in range(1, 6):
            mask = (c["corruption"] == i) & (c["severity"] == s)
            key = f"val/imagenet-c/{C_NAMES[i]}/s{s}/err"
            assert 100 * wrong[mask].mean() == pytest.approx(m[key]), key
            # every (corruption, severity) holds each clean image once: the bootstrap's resampling unit
            assert sorted(c["source_image"][mask]) == list(range(mask.sum())), key
    assert (np.bincount(c["source_image"]) == len(C_SUBSET) * 5).all()


def test_run_config_is_inherited_and_overrides_win(run_dir: Path, bench_root: Path):
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    cfg = compose_config([f"checkpoint={checkpoint}", "data.eval_batch_size=7"])
    assert (cfg.data.root, cfg.data.image_size, cfg.model.name) == (str(bench_root), 32, "test_resnet")
    assert (cfg.head.name, cfg.experiment, cfg.data.eval_batch_size) == ("sigmoid", "sigmoid_baseline", 7)
    assert cfg.eval.paths["imagenet-c"].endswith("imagenet-c")
    assert cfg.eval.max_images is None  # the run's per-epoch cap: its final evaluation read every image
    cfg = compose_config([f"checkpoint={checkpoint}", "eval=clean", "head=softmax"])
    assert "imagenet-c" not in cfg.eval.variants and not cfg.eval.paths and cfg.head.name == "softmax"
    assert cfg.data.root == str(bench_root)


def test_timm_weights_file_scores_like_a_plain_forward_pass(
    tmp_path: Path, bench_root: Path, cache_dir: Path
):
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=20).eval()
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "eval"
    run_eval(
        [
            "model.name=test_resnet",
            f"model.pretrained={weights}",
            "head=softmax",
            f"data.root={bench_root}",
            "data.image_size=32",
            "data.num_workers=0",
            "eval.variants=[imagenet]",
            "save_logits=true",
            f"output_dir={out}",
        ],
        tmp_path,
        cache_dir,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    saved = np.load(out / "logits" / "imagenet.npz")
    classes = (bench_root / "classes.txt").read_text().split()
    samples = scan_folder(bench_root / "val", classes)
    cfg = model.pretrained_cfg  # timm's transform with the model's own normalisation
    transform = timm.data.create_transform(
        32, crop_pct=1.0, interpolation="bilinear", mean=cfg["mean"], std=cfg["std"]
    )
    with torch.no_grad():
        logits = model(torch.stack([transform(Image.open(s.path).convert("RGB")) for s in samples]))
    np.testing.assert_allclose(saved["logits"], logits.numpy(), rtol=1e-4, atol=1e-5)
    target = np.array([s.target for s in samples])
    assert (saved["target"] == target).all()
    assert metrics["val/imagenet/top1"] == pytest.approx(100 * np.mean(saved["logits"].argmax(1) == target))
    assert metrics["experiment"] == "default"


def test_unreadable_images_score_as_if_they_were_not_there(tmp_path: Path, bench_root: Path, cache_dir: Path):
    """Unreadable val / ImageNet-R files leave numerator and denominator and are listed by name: the
    scores equal those of the same sets with the files deleted."""
    root = tmp_path / "bench_copy"
    shutil.copytree(bench_root, root)
    classes = (root / "classes.txt").read_text().split()
    val = [s.path for s in scan_folder(root / "val", classes)]
    r_files = sorted((root / "imagenet-r").rglob("*.*"))
    broken = {"imagenet": [val[0], val[7], val[-1]], "imagenet-r": r_files[3:5]}  # last: wraps to the first
    for i, path in enumerate(broken["imagenet"] + broken["imagenet-r"]):
        if i % 2:
            path.write_text("this is not an image")
        else:
            path.write_bytes(path.read_bytes()[:200])  # a truncated JPEG
    weights = random_weights(tmp_path / "weights.pth")
    args = [
        "model.name=test_resnet",
        f"model.pretrained={weights}",
        f"data.root={root}",
        "data.image_size=32",
        "data.num_workers=0",
        "eval.variants=[imagenet,imagenet-r]",
    ]
    run_eval([*args, f"output_dir={tmp_path / 'broken'}"], tmp_path, cache_dir)
    listed = (tmp_path / "broken" / "unreadable_eval_files.txt").read_text().splitlines()
    assert sorted(listed) == sorted(f"{name}\t{path}" for name, paths in broken.items() for path in paths)
    for path in broken["imagenet"] + broken["imagenet-r"]:
        path.unlink()
    run_eval([*args, f"output_dir={tmp_path / 'deleted'}"], tmp_path, cache_dir)
    with_broken = json.loads((tmp_path / "broken" / "metrics.json").read_text())
    with_deleted = json.loads((tmp_path / "deleted" / "metrics.json").read_text())
    assert with_broken["val/imagenet/n"] == len(val) - 3
    assert with_broken == pytest.approx(with_deleted, abs=1e-9)


@pytest.fixture
def bad_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run whose checkpoint's classifier was cut to 10 classes."""
    bad = tmp_path / "bad_run"
    (bad / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", bad / "config.yaml")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    for key in ("classifier.fc.weight", "classifier.fc.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key][:10]
    torch.save(ckpt, bad / "checkpoints" / "last.ckpt")
    return bad


def error_line(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


def test_an_output_dir_holding_results_is_refused(run_dir: Path, evaluated: Path, capsys):
    """A second evaluation into the same folder would mix two models' rows in history.csv."""
    line = error_line(
        [f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", f"output_dir={evaluated}"], capsys
    )
    assert f"output_dir={evaluated} already holds results (metrics.json)" in line


def test_help_prints_usage(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m evaluation checkpoint=") and "eval.c_normaliser" in out


def test_bad_input_stops_with_one_line(tmp_path: Path, bad_run: Path, bench_root: Path, capsys):
    out = f"output_dir={tmp_path / 'out'}"
    assert "checkpoint=/nowhere/last.ckpt not found" in error_line(
        ["checkpoint=/nowhere/last.ckpt", out], capsys
    )
    line = error_line([f"checkpoint={bad_run / 'checkpoints' / 'last.ckpt'}", out], capsys)
    assert "has 10 classes but the data has 20" in line
    data = [
        f"data.root={bench_root}",
        "data.image_size=32",
        "data.num_workers=0",
        "eval.variants=[imagenet]",
        out,
    ]
    assert "nothing to evaluate" in error_line(["model.name=test_resnet", *data], capsys)
    weights = tmp_path / "in1k.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)  # 1000 classes
    line = error_line(["model.name=test_resnet", f"model.pretrained={weights}", *data], capsys)
    assert f"model.pretrained={weights} has 1000 classes but the data has 20" in line
    line = error_line([f"checkpoint={weights}", "model.name=test_resnet", *data], capsys)
    assert "is not a `python -m train` checkpoint" in line
    assert "data.bogus" in error_line(["data.bogus=1", out], capsys)
    line = error_line([f"hydra.run.dir={tmp_path / 'out'}", *data], capsys)  # train's way to name the folder
    assert "hydra.run.dir has no effect" in line and "output_dir=<folder>" in line
    line = error_line([f"paths.output_dir={tmp_path / 'out'}", *data], capsys)
    assert "paths.output_dir is a training run's folder" in line and "output_dir=<folder>" in line
    weights_data = [f"model.pretrained={weights}", "model.name=test_resnet", *data]
    line = error_line([*weights_data, "eval.c_normaliser=alexnett"], capsys)
    assert "eval.c_normaliser='alexnett' is unknown" in line
    assert not (tmp_path / "out").exists()  # stopped before writing anything

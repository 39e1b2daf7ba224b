"""Real (tiny) trainings through the real command line: outputs, W&B offline, bad files, NaN stop."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import TINY, cli_env, run_train
from PIL import Image
from timm.data.auto_augment import AugMixAugment

from evaluation.variants import VARIANTS as ALL_VARIANTS
from train.config import DataConfig
from train.data.benchmark import benchmark_hash
from train.data.transforms import train_transform

VARIANTS = tuple(ALL_VARIANTS)


def leet_summary(run_dir: Path, cache_dir: Path) -> dict:
    """The offline W&B run's summary, read back with W&B's own local reader."""
    wandb_cli = Path(sys.executable).parent / "wandb"
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {run_dir / 'wandb'}"
    proc = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(runs[-1])],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(cache_dir),
        check=True,
    )
    return json.loads(proc.stdout)


@pytest.mark.parametrize("experiment", ["softmax_baseline", "sigmoid_baseline"])
def test_training_run_writes_every_output(tmp_path: Path, bench_root: Path, cache_dir: Path, experiment: str):
    run_dir = tmp_path / "run"
    proc = run_train(
        [f"experiment={experiment}", *TINY, f"data.root={bench_root}", f"hydra.run.dir={run_dir}"],
        tmp_path,
        cache_dir,
    )
    log = proc.stdout + proc.stderr
    assert f"run directory: {run_dir}" in log

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["experiment"] == experiment
    for variant in VARIANTS:
        if variant not in ("imagenet-o", "imagenet-p"):  # detection and stability, no accuracy
            assert 0.0 <= metrics[f"val/{variant}/top1"] <= 100.0
    assert 0.0 <= metrics["val/imagenet-o/auroc"] <= 1.0 and metrics["val/imagenet-c/mce"] > 0
    assert (
        metrics["val/imagenet-c-gen/mce"] > 0 and metrics["val/imagenet-c-gen/n"] == 10 * 75
    )  # full grid at the end
    assert 0.0 <= metrics["val/imagenet-p/fp"] <= 1.0 and metrics["val/imagenet-p/n"] == 2
    assert metrics["val/imagenet-c/n"] == len(list((bench_root / "imagenet-c").rglob("*.JPEG")))
    val_files = sorted((bench_root / "val").rglob("*.JPEG"))
    real = json.loads((bench_root / "real.json").read_text())
    assert metrics["val/imagenet/n"] == len(val_files)
    assert metrics["val/imagenet-real/n"] == sum(1 for labels in real if labels)  # empty ReaL sets left out

    history = pd.read_csv(run_dir / "history.csv")
    assert set(history.variant) == set(VARIANTS) and set(history.phase) == {"epoch", "final"}
    final = history[(history.phase == "final") & (history.variant == "imagenet")].iloc[0]
    assert final.top1 == pytest.approx(metrics["val/imagenet/top1"])

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["experiment"] == experiment and config["head"]["name"] == experiment.split("_")[0]
    assert config["paths"]["output_dir"] == str(run_dir)  # the folder hydra.run.dir= chose
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["benchmark_sha256"] == benchmark_hash(bench_root)
    assert {"torch", "lightning", "timm"} <= set(provenance["packages"])
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and "RandomStateCheckpoint" in str(ckpt["callbacks"])
    assert "imagenet-real" in (run_dir / "results.txt").read_text()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()  # selected on minival
    for plot in ("reliability_epoch000.png", "reliability_final.png", "imagenet-o_confidence_final.png"):
        assert (run_dir / "plots" / plot).stat().st_size > 10_000

    # W&B: no API key, no network -> offline run in the run dir, same id, group = experiment, tags
    summary = leet_summary(run_dir, cache_dir)
    text = json.dumps(summary)
    run_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert run_id in text and experiment in text and f"head:{experiment.split('_')[0]}" in text
    assert "val/imagenet/top1" in text and "health/images_per_s" in text


def test_bad_images_are_replaced_counted_and_listed(tmp_path: Path, bench_root: Path, cache_dir: Path):
    root = tmp_path / "bench_copy"
    shutil.copytree(bench_root, root)
    wnid = (root / "classes.txt").read_text().split()[0]
    files = sorted((root / "train" / wnid).glob("*.JPEG"))
    files[0].write_bytes(files[0].read_bytes()[:200])  # truncated JPEG
    files[1].write_text("this is not an image")
    (root / "train" / wnid / "zz_notes.txt").write_text("stray non-image file")
    bad_val = sorted((root / "val" / wnid).glob("*.JPEG"))[0]
    bad_val.write_text("this is not an image")
    run_dir = tmp_path / "run"
    run_train(
        [
            *TINY,
            "trainer.limit_train_batches=null",
            f"data.root={root}",
            "logger=csv",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        cache_dir,
    )
    listed = (run_dir / "bad_files.txt").read_text().splitlines()
    bad = {str(files[0]), str(files[1]), str(root / "train" / wnid / "zz_notes.txt")}
    dropped = len(list((root / "train").rglob("*"))) % 16  # drop_last may skip a few indices
    assert {line.split("\t")[1] for line in listed} <= bad and len(listed) >= 3 - dropped
    logged = pd.read_csv(run_dir / "csv" / "metrics.csv")
    assert logged["data/bad_files"].dropna().iloc[-1] == len(listed)
    # the epoch's and the final evaluation both meet the unreadable val image: each file is listed once
    unreadable = (run_dir / "unreadable_eval_files.txt").read_text().splitlines()
    assert len(set(unreadable)) == len(unreadable)
    assert {line.split("\t")[1] for line in unreadable} <= bad | {str(bad_val)}  # minival is held-out train
    (val_line,) = [line for line in unreadable if line.endswith(f"\t{bad_val}")]
    assert val_line.startswith("imagenet,imagenet-real,")
    with Image.open(files[2]) as image:  # the good files are untouched
        image.load()


def test_deepaugment_experiment_trains_and_previews(tmp_path: Path, bench_root: Path, cache_dir: Path):
    run_dir = tmp_path / "run"
    run_train(
        [
            "experiment=sigmoid_deepaug",
            *TINY,
            f"data.root={bench_root}",
            "eval=clean",
            "logger=csv",
            "augment_pretrain.budget_s=20",
            "augment_pretrain.max_images=256",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        cache_dir,
    )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["augment"]["_target_"] == "augment.DeepAugment" and config["head"]["name"] == "sigmoid"
    log = (run_dir / "__main__.log").read_text()  # 32 px: the CAE's blocky regime is named, with the fix
    assert "the CAE runs at 32 px, where its output is visibly blocky" in log and "augment.cae_size=64" in log
    assert json.loads((run_dir / "metrics.json").read_text())["experiment"] == "sigmoid_deepaug"
    with Image.open(run_dir / "plots" / "augment_preview.png") as preview:  # clean | EDSR | CAE: what it runs
        assert preview.width == 3 * 128 and preview.height > 8 * 128
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["augment_rng_state"].dtype == torch.uint8  # replayed on resume
    assert not any(k.startswith(("augment", "edsr", "cae")) for k in ckpt["state_dict"])  # outside the model


def test_deepaugment_with_augmix_trains(tmp_path: Path, bench_root: Path, cache_dir: Path):
    """augment=deepaugment_augmix (the reference's best model): DeepAugment on the device, timm's AugMix in the
    CPU-side training transform."""
    run_dir = tmp_path / "run"
    run_train(
        [
            "experiment=sigmoid_deepaug",
            "augment=deepaugment_augmix",
            *TINY,
            f"data.root={bench_root}",
            "eval=clean",
            "logger=none",
            "augment_pretrain.budget_s=20",  # the same pretraining as the test above: cached
            "augment_pretrain.max_images=256",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        cache_dir,
    )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["augment"]["_target_"] == "augment.DeepAugment"
    assert config["data"]["auto_augment"] == "augmix-m3-w3-d1"
    steps = train_transform(DataConfig(**config["data"])).transforms[0].transforms
    assert any(isinstance(step, AugMixAugment) for step in steps)
    assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_last_checkpoint_without_an_evaluation_and_no_best_without_minival(
    tmp_path: Path, bench_root: Path, cache_dir: Path
):
    """eval.every_n_epochs=2 in a one-epoch run: last.ckpt still holds the trained weights; minival asked for
    but empty (data.minival_fraction=0): skipped with a warning, no best.ckpt to select by it."""
    run_dir = tmp_path / "run"
    proc = run_train(
        [
            *TINY,
            f"data.root={bench_root}",
            "eval.every_n_epochs=2",
            "data.minival_fraction=0",
            "eval.variants=[minival,imagenet]",
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ],
        tmp_path,
        cache_dir,
    )
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3 and not (run_dir / "checkpoints" / "best.ckpt").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val/imagenet/top1" in metrics and not any(k.startswith("val/minival/") for k in metrics)
    assert "Validation imagenet: 100%" in proc.stdout  # the bar names the variants its loader scores

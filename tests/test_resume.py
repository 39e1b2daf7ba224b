"""A run killed with SIGKILL and resumed ends bit-equal to an uninterrupted run; NaN loss stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from conftest import TINY, cli_env, run_train
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from train.__main__ import CONFIG_DIR
from train.config import LoggerConfig, register_configs
from train.loggers import create_logger
from train.module import NonFiniteLossError
from train.program import run
from train.run_dir import OutputDirError, resume_overrides

RESUME_ARGS = [  # every random stream: loader order, workers, mixup, dropout, augmentation
    *TINY,
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=8",
    "data.num_workers=1",
    "optim.warmup_epochs=0.5",
    "mixup.mixup_alpha=0.2",
    "model.drop_rate=0.2",
    "augment=noise2net",  # its generator state must replay too
    "eval=clean",
]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]


def test_sigkill_and_resume_is_bit_equal(tmp_path: Path, bench_root: Path, cache_dir: Path):
    common = [*RESUME_ARGS, f"data.root={bench_root}", "seed=7"]
    straight = tmp_path / "straight"
    run_train([*common, "logger=csv", f"hydra.run.dir={straight}"], tmp_path, cache_dir)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "train", *common, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        env=cli_env(cache_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)  # during epoch 2: the epoch-1 checkpoint is on disk
    proc.wait()
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == 8
    assert not (killed / "metrics.json").exists()

    run_train([f"resume={killed}"], tmp_path, cache_dir)
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 24
    offline_runs = list((killed / "wandb").glob("offline-run-*"))
    run_id = (killed / "wandb_run_id.txt").read_text().strip()
    assert len(offline_runs) == 2 and all(p.name.endswith(run_id) for p in offline_runs)  # same W&B run id

    # the finished run's folder is not taken over: not by a new run, not by a resume with another experiment
    proc = run_train([*common, f"hydra.run.dir={killed}"], tmp_path, cache_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        f"error: {killed} already holds a run (provenance.json); continue it with resume={killed}"
        in proc.stderr
    )
    proc = run_train([f"resume={killed}", "experiment=softmax_baseline"], tmp_path, cache_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "cannot change experiment (experiment at its default -> experiment=softmax_baseline)" in proc.stderr
    )
    assert (killed / "wandb_run_id.txt").read_text().strip() == run_id


def test_resume_may_change_how_a_run_runs_but_not_what_it_trains(tmp_path: Path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- experiment=sigmoid_baseline\n- model.name=test_resnet\n"
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    allowed = [
        "trainer.max_epochs=5",
        "data.num_workers=2",
        "data.root=/scratch/imagenet",  # the same data, moved to another disk
        "logger=csv",
        "eval=clean",
        "model.name=test_resnet",
        "+augment.fused_cpu=false",  # Noise2Net without its C kernels: the same result
        "+augment.steps.1.cpu_pass_pixels=4096",
    ]
    assert resume_overrides(tmp_path, allowed)[:2] == [
        "experiment=sigmoid_baseline",
        "model.name=test_resnet",
    ]
    for override in (
        "experiment=softmax_baseline",
        "head=softmax",
        "+augment.max_eps=1",
        "+augment.steps.1.precision=fp32",
        "data.batch_size=8",
        "seed=1",
    ):
        with pytest.raises(OutputDirError, match=f"cannot change {override.split('=')[0].lstrip('+')} "):
            resume_overrides(tmp_path, [override])


def test_a_non_finite_loss_is_one_line_on_the_command_line(tmp_path: Path, bench_root: Path, cache_dir: Path):
    args = [
        *TINY,
        f"data.root={bench_root}",
        "optim.lr=1e30",
        "logger=none",
        "eval=clean",
        "hydra.run.dir=run",
    ]
    proc = run_train(args, tmp_path, cache_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: training loss is" in proc.stderr and "lower optim.lr" in proc.stderr


def test_resume_of_a_folder_without_a_run_is_a_clear_error(tmp_path: Path, cache_dir: Path):
    proc = run_train([f"resume={tmp_path}"], tmp_path, cache_dir, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"resume={tmp_path}: {tmp_path}/.hydra/overrides.yaml not found" in proc.stderr


class DivergeAfterFirstEpoch(L.Callback):
    """Fault injection: the weights blow up to inf after epoch 1, as with a far too large step."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 1:
            with torch.no_grad():
                pl_module.classifier.get_classifier().weight.fill_(float("inf"))


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path: Path, bench_root: Path):
    register_configs()
    run_dir = tmp_path / "run"
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(
            "config",
            overrides=[
                *TINY,
                "trainer.max_epochs=2",
                f"data.root={bench_root}",
                "logger=none",
                f"hydra.run.dir={run_dir}",
            ],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir()
    with open_dict(cfg):
        del cfg.hydra
    with pytest.raises(
        NonFiniteLossError, match=r"training loss is (nan|inf) at epoch 1, step 3; lower optim.lr"
    ):
        run(cfg, extra_callbacks=[DivergeAfterFirstEpoch()])
    good = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert good["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


class _TinyRegression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_health_monitor_survives_a_mid_epoch_resume(tmp_path: Path):
    """Lightning skips on_train_epoch_start when it resumes inside an epoch (a SLURM requeue does)."""
    from torch.utils.data import DataLoader, TensorDataset

    from train.callbacks import HealthMonitor

    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=4)
    common = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    saver = L.pytorch.callbacks.ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=3, save_top_k=-1)
    first = L.Trainer(max_epochs=1, callbacks=[HealthMonitor(), saver], default_root_dir=tmp_path, **common)
    first.fit(_TinyRegression(), data)
    checkpoint = tmp_path / "step=3.ckpt"  # saved inside epoch 0 (8 steps)
    monitor = HealthMonitor()
    resumed = L.Trainer(max_epochs=1, callbacks=[monitor], default_root_dir=tmp_path, **common)
    resumed.fit(_TinyRegression(), data, ckpt_path=checkpoint)
    assert resumed.global_step == 8 and monitor.images == 5 * 4  # the rest of epoch 0, counted


def test_a_resumed_csv_logger_keeps_the_earlier_rows(tmp_path: Path):
    """Lightning's CSVLogger deletes an existing metrics.csv; each earlier segment is kept as metrics.<k>.csv."""
    segments = []
    for k in range(3):  # the first run, then two resumes
        logger = create_logger(LoggerConfig(name="csv"), tmp_path, "run", "group", [], {}, None)
        logger.log_metrics({"train/loss": float(k)}, step=k)
        logger.save()
        segments.append(pd.read_csv(tmp_path / "csv" / "metrics.csv"))
    kept = [pd.read_csv(tmp_path / "csv" / f"metrics.{k}.csv") for k in range(2)]
    assert [frame["train/loss"].tolist() for frame in [*kept, segments[-1]]] == [[0.0], [1.0], [2.0]]

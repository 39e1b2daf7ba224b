"""Shared fixtures: a small embedded benchmark, a helper that runs the real training CLI, and a random
timm weights file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from train.data.benchmark import ensure_benchmark

REPO = Path(__file__).resolve().parents[1]

# A real but tiny training: 0.4M-parameter timm test model, 32 px, a few steps.
TINY = [
    "model.name=test_resnet",
    "data.image_size=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "optim.lr=0.05",
    "eval.c_grid_images=10",
    "eval.p_images=2",
]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def bench_root(cache_dir: Path) -> Path:
    """The embedded benchmark at 1/5 of its image counts (same generator, same layouts)."""
    return ensure_benchmark(root=cache_dir, seed=0, scale=0.2, progress=False)


def cli_env(cache_dir: Path) -> dict[str, str]:
    """Environment of a user without W&B credentials and with a private cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        SIGROB_CACHE_DIR=str(cache_dir),
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
        HOME=env.get("HOME", str(cache_dir)),
    )
    return env


def run_train(
    args: list[str], cwd: Path, cache_dir: Path, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m train <args>`` in a subprocess, exactly as a user types it."""
    proc = subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        env=cli_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"python -m train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def random_weights(path: Path, num_classes: int = 20) -> Path:
    """A timm ``test_resnet`` state dict with seed-0 random weights, saved at ``path``."""
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=num_classes).state_dict(), path)
    return path

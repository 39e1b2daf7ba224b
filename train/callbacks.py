"""Lightning callbacks of the training program: exact resume, per-epoch health, bad-file report."""

from __future__ import annotations

import os
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from evaluation.distributed import gather_objects


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it: a kill never leaves half a file."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


def numpy_state_to_plain(state: tuple) -> tuple:
    """numpy's legacy RNG state with its key array as a tensor (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


class RandomStateCheckpoint(L.Callback):
    """Saves the global random states in checkpoints and restores them when training resumes.

    Python, numpy and torch (CPU and CUDA) generators are captured at checkpoint time (epoch end,
    after validation). They are re-applied as soon as Lightning restores callback states, before
    it creates the first training iterator (whose shuffling and worker seeds come from the torch
    generator), so the resumed run draws the same numbers as an uninterrupted one. The
    augmentation's own generators are saved by the module. A sanity-check validation
    (``trainer.num_sanity_val_steps > 0``) draws worker seeds in between and breaks
    bit-exactness; it is off by default.
    """

    def state_dict(self) -> dict[str, Any]:
        return {
            "python": random.getstate(),
            "numpy": numpy_state_to_plain(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        name, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def cpu_peak_memory_mb() -> float:
    """Peak resident memory of this process so far, MiB (getrusage: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class HealthMonitor(L.Callback):
    """Logs images/s, seconds spent waiting for data, and peak memory once per training epoch (on a GPU the
    epoch's peak of allocated memory; on a CPU the process's peak resident memory so far)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a run resumed mid-epoch (e.g. a SLURM requeue) continues an epoch whose start hook does not run again
        self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images = 0
        self.wait = 0.0
        self.start = time.perf_counter()
        self.last_end = self.start
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.wait += time.perf_counter() - self.last_end

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.images += batch[0].shape[0]
        self.last_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = max(self.last_end - self.start, 1e-9)
        if pl_module.device.type == "cuda":
            peak_mb = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
        else:
            peak_mb = cpu_peak_memory_mb()
        pl_module.log_dict(
            {
                "health/images_per_s": self.images * trainer.world_size / seconds,
                "health/data_wait_s": self.wait,
                "health/data_wait_fraction": self.wait / seconds,
                "health/peak_memory_mb": peak_mb,
            },
            on_epoch=True,
            sync_dist=False,
            rank_zero_only=True,
        )


class BadFileReport(L.Callback):
    """Counts unreadable training images (replaced by the dataset), across workers and ranks.

    The dataset marks each replaced file in the batch (``batch[3]``, -1 when none); here they are
    gathered from every rank at epoch end, logged as ``data/bad_files`` and listed in
    ``<run_dir>/bad_files.txt`` by rank 0.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "bad_files.txt"
        self.epoch_bad: list[int] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_bad = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        bad = batch[3]
        self.epoch_bad.extend(bad[bad >= 0].tolist())

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gathered = gather_objects(self.epoch_bad)
        indices = sorted({i for part in gathered for i in part})
        pl_module.log("data/bad_files", float(len(indices)), on_epoch=True, rank_zero_only=True)
        if indices and trainer.is_global_zero:
            samples = trainer.datamodule.train_set.samples
            with self.path.open("a") as handle:
                for i in indices:
                    handle.write(f"epoch {trainer.current_epoch}\t{samples[i].path}\n")

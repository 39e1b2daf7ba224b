"""Clusters: the run directory's name under SLURM, the requeue mechanism, resume, and process ranks.

One requeue mechanism: Lightning's. SLURM sends SIGUSR1 ``signal_delay_s`` before the time limit
(``#SBATCH --signal=USR1@90``, set by ``hydra/launcher=slurm``); Lightning's SLURM environment
saves ``<run dir>/hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue <job id>``. submitit's own
checkpoint-and-resubmit is off (``max_num_timeout: 0``, and it listens to USR2, which is never sent).
The requeued job gets the same job id, so ``${run_stamp:}`` names the same run directory, where
:func:`resume_checkpoint` finds the newest checkpoint and ``wandb_run_id.txt`` the same W&B run.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import OmegaConf

REQUEUE_SIGNAL = signal.SIGUSR1
HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"  # Lightning's name, written into Trainer.default_root_dir


def slurm_job_id() -> str | None:
    """``<array job id>_<task id>`` for an array task, ``SLURM_JOB_ID`` for a job, else ``None``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def run_stamp() -> str:
    """The last part of a default run directory: ``slurm-<job id>`` under SLURM (a requeued job
    finds its folder again, and all srun tasks agree), else the local time and the process id (two
    runs started in the same second get folders of their own; Lightning gives the DDP processes it
    starts the parent's folder), or under a launcher such as torchrun (LOCAL_RANK set) its pid, which the
    processes of a node share (across nodes, give hydra.run.dir)."""
    job = slurm_job_id()
    launcher = os.getppid() if "LOCAL_RANK" in os.environ else os.getpid()
    return f"slurm-{job}" if job else f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{launcher}"


def register_resolvers() -> None:
    """``${run_stamp:}`` for the configs (cached per config, like Hydra's ``${now:}``)."""
    OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True, replace=True)


def on_slurm() -> bool:
    """A SLURM batch job (Lightning's own test: not an interactive allocation)."""
    return SLURMEnvironment.detect()


def cluster_plugins() -> list[Any]:
    """Lightning's SLURM environment with auto-requeue on SIGUSR1 when running under SLURM."""
    return [SLURMEnvironment(auto_requeue=True, requeue_signal=REQUEUE_SIGNAL)] if on_slurm() else []


def resume_checkpoint(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from: of ``checkpoints/last.ckpt`` and Lightning's
    ``hpc_ckpt_<n>.ckpt`` in ``run_dir``, the one with the most training steps, and on a tie the
    epoch-end ``last.ckpt``; only when resuming (``resume=``) or when a SLURM job finds checkpoints
    in its folder (a requeued job). ``None``: start from scratch.

    The tie matters: SIGUSR1 can land between two epochs, after ``last.ckpt`` was written, and an
    ``hpc_ckpt`` saved there (same weights, same step) restores a fit loop that has readied the next
    epoch but not started it, from which Lightning runs that epoch without a batch (a 3-epoch run
    trained 16 of its 24 steps). Passing the path explicitly also stops Lightning from picking an
    older ``hpc_ckpt`` on its own when the job was requeued for another reason after later epoch
    checkpoints were written.
    """
    if not (resume or on_slurm()):
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    found = [p for p in (last, *run_dir.glob(HPC_CHECKPOINT_GLOB)) if p.is_file()]
    return max(found, key=lambda p: (saved_step(p), p == last, p.stat().st_mtime_ns)) if found else None


def saved_step(checkpoint: Path) -> int:
    """The ``global_step`` a Lightning checkpoint was saved at (its tensors are memory-mapped, not read)."""
    return int(torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=False)["global_step"])


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, known before the Trainer exists from the launcher's
    environment (torchrun's RANK, SLURM's task id, or the NODE_RANK/LOCAL_RANK Lightning gives the
    processes it starts); a plain single process is rank 0. Run files and W&B are rank 0's only."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    if on_slurm():
        return int(os.environ.get("SLURM_PROCID", 0)) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def module_classes(*paths: str) -> set[type]:
    """Classes from dotted paths, as a set (FSDP's ``auto_wrap_policy``: one unit per instance)."""
    return {get_class(path) for path in paths}


def build_strategy(strategy: Any) -> Any:
    """``trainer.strategy``: a Lightning name (``ddp``, ``auto``) as is, or a ``_target_`` node
    (``trainer=fsdp``) instantiated."""
    if isinstance(strategy, dict) and "_target_" in strategy:
        return instantiate(strategy)
    return strategy

"""Checks of the open config groups (``trainer``, ``augment``) against their targets' signatures."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L

# Trainer arguments the program sets itself; a config value for them would be silently replaced.
PROGRAM_OWNED = (
    "callbacks",
    "logger",
    "plugins",
    "default_root_dir",
    "enable_checkpointing",
    "check_val_every_n_epoch",
    "use_distributed_sampler",
)


def check_trainer_args(trainer_cfg: dict[str, Any]) -> None:
    """Every ``trainer.<key>`` must be a ``lightning.Trainer`` argument not owned by the program."""
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    for key in trainer_cfg:
        if key in PROGRAM_OWNED:
            raise ValueError(f"trainer.{key} is set by the training program; remove it from the config")
        if key not in accepted:
            raise ValueError(
                f"trainer.{key} is not a lightning.Trainer argument; see `help(lightning.Trainer)`"
            )


def resolve_precision(trainer_cfg: dict[str, Any], has_cuda: bool) -> str:
    """``trainer.precision``, or bf16-mixed when training on a GPU and 32-true on the CPU."""
    if trainer_cfg.get("precision") is not None:
        return str(trainer_cfg["precision"])
    on_gpu = has_cuda and trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"

"""Batch-size semantics across devices: ``data.batch_size`` is per device; the global batch and
the optional linear learning-rate scaling rule follow from the Trainer's world size."""

from __future__ import annotations

from dataclasses import replace

import lightning as L

from train.config import OptimConfig

SCALING_RULES = ("none", "linear")


def global_batch(per_device: int, trainer: L.Trainer) -> int:
    """Images per optimiser step: per-device batch x devices x nodes x gradient accumulation."""
    return per_device * trainer.world_size * trainer.accumulate_grad_batches


def scaled_optim(cfg: OptimConfig, batch: int) -> OptimConfig:
    """``optim`` with the learning rate for a global batch of ``batch`` images.

    ``optim.lr_scaling=none``: ``optim.lr`` as given. ``linear`` (Goyal et al.):
    ``optim.lr * batch / optim.lr_base_batch``, so a recipe's lr holds at its reference batch.
    """
    if cfg.lr_scaling not in SCALING_RULES:
        raise ValueError(f"optim.lr_scaling={cfg.lr_scaling!r} is unknown; use none or linear")
    if cfg.lr_base_batch <= 0:
        raise ValueError(f"optim.lr_base_batch={cfg.lr_base_batch} must be a positive number of images")
    if cfg.lr_scaling == "none":
        return cfg
    return replace(cfg, lr=cfg.lr * batch / cfg.lr_base_batch)


def describe(per_device: int, trainer: L.Trainer, cfg: OptimConfig, scaled: OptimConfig) -> str:
    """One line for the log: how the global batch and the learning rate came about."""
    line = (
        f"global batch {global_batch(per_device, trainer)} = {per_device} per device x "
        f"{trainer.world_size} processes x {trainer.accumulate_grad_batches} accumulated"
    )
    if cfg.lr_scaling == "linear":
        return f"{line}; lr {scaled.lr:g} = {cfg.lr:g} x {global_batch(per_device, trainer)} / {cfg.lr_base_batch}"
    return f"{line}; lr {cfg.lr:g} (optim.lr_scaling=none)"

"""Experiment loggers: W&B (online when reachable, else offline, never blocking), CSV, or none."""

from __future__ import annotations

import itertools
import logging
import netrc
import os
import socket
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from train.config import LoggerConfig

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"
PROBE_TIMEOUT_S = 3.0


def wandb_api_key_present() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return (
            netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", WANDB_HOST).split("//")[-1])
            is not None
        )
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_server_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """A time-boxed TCP connection to the W&B server (never hangs longer than ``timeout``)."""
    host = os.environ.get("WANDB_BASE_URL", WANDB_HOST).split("//")[-1].split("/")[0]
    try:
        with socket.create_connection((host.split(":")[0], 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(mode: str) -> str:
    """``online``/``offline`` as configured; ``auto`` (or an env WANDB_MODE) decides by key and network."""
    env = os.environ.get("WANDB_MODE")
    if mode == "auto" and env in ("online", "offline", "disabled"):
        if env == "disabled":  # the run's files still hold its record (compare reads them)
            log.warning("WANDB_MODE=disabled: W&B logs offline; logger=none or logger=csv turns it off")
            return "offline"
        return env
    if mode in ("online", "offline"):
        return mode
    if mode != "auto":
        raise ValueError(f"logger.mode={mode!r} is unknown; use auto, online or offline")
    if not wandb_api_key_present():
        log.info("W&B: no API key found, logging offline (upload later with `wandb sync`)")
        return "offline"
    if not wandb_server_reachable():
        log.warning("W&B: %s not reachable within %.0f s, logging offline", WANDB_HOST, PROBE_TIMEOUT_S)
        return "offline"
    return "online"


def run_tags(experiment: str, head: str, augment: str, model: str, data: str, seed: int) -> list[str]:
    """W&B tags of a run (training or evaluation): ``head:``, ``augment:``, ``model:``, ``data:``,
    ``seed:`` and the experiment name."""
    return [
        f"head:{head}",
        f"augment:{augment}",
        f"model:{model}",
        f"data:{data}",
        f"seed:{seed}",
        experiment,
    ]


def keep_earlier_csv(folder: Path) -> Path | None:
    """Rename a resumed run's ``metrics.csv`` to the first free ``metrics.<k>.csv`` (k = 0, 1, ...), which
    Lightning's CSVLogger would delete; returns the new name. The new segment writes ``metrics.csv``."""
    current = folder / "metrics.csv"
    if not current.is_file():
        return None
    kept = next(
        folder / f"metrics.{k}.csv" for k in itertools.count() if not (folder / f"metrics.{k}.csv").exists()
    )
    current.rename(kept)
    return kept


def create_logger(
    cfg: LoggerConfig,
    run_dir: Path,
    name: str,
    group: str,
    tags: list[str],
    config: dict[str, Any],
    run_id: str | None,
    job_type: str = "train",
) -> Logger | None:
    """The configured Lightning logger writing into ``run_dir`` (``None`` for ``logger=none``);
    ``job_type`` is W&B's (``train`` or ``eval``)."""
    if cfg.name == "none":
        return None
    if cfg.name == "csv":
        keep_earlier_csv(run_dir / "csv")
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if cfg.name != "wandb":
        raise ValueError(f"logger.name={cfg.name!r} is unknown; use wandb, csv or none")
    mode = resolve_wandb_mode(cfg.mode)
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
    logger = WandbLogger(
        name=name,
        save_dir=str(run_dir),
        id=run_id,
        project=cfg.project,
        entity=cfg.entity,
        group=group,
        tags=[*tags, *cfg.tags],
        job_type=job_type,
        offline=mode == "offline",
        resume="allow",
        config=config,
    )
    return logger


def wandb_environment() -> dict[str, str]:
    """The ``WANDB_*`` environment variables now (``WandbLogger(offline=True)`` sets WANDB_MODE for
    the whole process; :func:`restore_wandb_environment` puts them back after a run)."""
    return {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}


def restore_wandb_environment(saved: dict[str, str]) -> None:
    """Make the ``WANDB_*`` environment exactly ``saved`` again (the next run decides afresh)."""
    for key in [k for k in os.environ if k.startswith("WANDB_") and k not in saved]:
        del os.environ[key]
    os.environ.update(saved)

"""The run directory: what a run leaves behind and how a killed run is found again."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "hydra-core",
    "omegaconf",
    "wandb",
    "kornia",
    "torchmetrics",
    "numpy",
    "sigmoid-robustness",
)


class OutputDirError(OSError):
    """The run directory cannot be created or written."""


def can_create_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder`` (``os.access`` says yes to root in /proc)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_writable(path: Path, option: str = "hydra.run.dir=<dir> (or paths.output_dir=<dir>)") -> None:
    """Fail early (one line) when ``path`` or its nearest existing ancestor is not writable; the message
    tells how to choose another (``option``)."""
    probe = Path(path).absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK) or not can_create_in(probe):
        raise OutputDirError(
            f"output directory {path} cannot be created: {probe} is not a writable folder; "
            f"choose another with {option}"
        )


def git_commit(source: Path) -> str | None:
    """The commit of the checkout holding ``source`` (with ``-dirty`` when modified), if any."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_provenance(run_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """``provenance.json``: code commit, package versions, host, command line, plus ``extra``."""
    provenance = {
        "git_commit": git_commit(Path(__file__).parent),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "command": " ".join([Path(sys.executable).name, "-m", "train", *sys.argv[1:]]),
        **extra,
    }
    write_json(run_dir / "provenance.json", provenance)
    return provenance


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """The fully resolved config as ``config.yaml``."""
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def previous_group(run_dir: Path) -> str | None:
    """The W&B group recorded in ``run_dir``'s ``provenance.json`` by an earlier (now resumed) run."""
    path = run_dir / "provenance.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("wandb_group")


def run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory, created once and reused by resumed runs."""
    path = run_dir / "wandb_run_id.txt"
    if path.exists():
        return path.read_text().strip()
    new_id = uuid.uuid4().hex[:12]
    path.write_text(new_id + "\n")
    return new_id


RUN_MARKERS = ("provenance.json", "checkpoints/last.ckpt", "metrics.json")
"""Files that show a run directory already holds a run."""

# Overrides a resumed run may not change: they decide what is trained (keys below these, too) ...
FIXED_ON_RESUME = ("experiment", "seed", "head", "model", "augment", "mixup", "optim", "data")
# ... except these, which only change how it runs or where the same data lies (moved to another disk).
FREE_ON_RESUME = (
    "data.num_workers",
    "data.backend",
    "data.eval_batch_size",
    "data.root",
    "data.shards",
    "data.label_classes",  # which list the same data's label files index
    "data.real_labels",
    "model.compile",
)
# ... and augmentation options that change only how it runs (same result), at any depth (augment.steps.1.<option>)
FREE_AUGMENT_OPTIONS = ("fused_cpu", "cpu_pass_pixels")


def free_on_resume(key: str) -> bool:
    """Whether the flat config key ``key`` may differ between a run and its resumption (or two seeds of one
    experiment): :data:`FREE_ON_RESUME` and :data:`FREE_AUGMENT_OPTIONS`."""
    return key in FREE_ON_RESUME or (
        key.startswith("augment.") and key.rsplit(".", 1)[-1] in FREE_AUGMENT_OPTIONS
    )


def check_new_run_dir(run_dir: Path) -> None:
    """Refuse (one line) to start a new run in a folder that holds one: its W&B run id, group and files
    would be taken over by the new run, mixing two experiments under one name."""
    found = [marker for marker in RUN_MARKERS if (run_dir / marker).is_file()]
    if found:
        raise OutputDirError(
            f"{run_dir} already holds a run ({found[0]}); continue it with resume={run_dir}, or choose another "
            "hydra.run.dir"
        )


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys (W&B groups runs by these)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def check_run_dir(run_dir: Path, cfg: DictConfig, resuming: bool, slurm: bool) -> None:
    """Before Hydra writes into ``run_dir``: a new run refuses a folder holding a run (:func:`check_new_run_dir`);
    a SLURM job finding one continues it (a requeue) only when it trains the same thing -- a second training
    of other settings in one job would otherwise take over the first one's checkpoint and files."""
    if resuming:
        return
    if not slurm:
        check_new_run_dir(run_dir)
        return
    saved = run_dir / "config.yaml"
    if not any((run_dir / marker).is_file() for marker in RUN_MARKERS) or not saved.is_file():
        return
    before = flatten(OmegaConf.to_container(OmegaConf.load(saved), resolve=True))
    now = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(k for k in before.keys() | now.keys() if _fixed(k) and before.get(k) != now.get(k))
    if changed:
        key = changed[0]
        raise OutputDirError(
            f"{run_dir} holds a run of other settings ({key}={before.get(key)} there, {now.get(key)} here): a "
            "requeued job continues its own run; give a second training in one SLURM job its own hydra.run.dir"
        )


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _fixed(key: str) -> bool:
    return not free_on_resume(key) and any(key == k or key.startswith(f"{k}.") for k in FIXED_ON_RESUME)


def resume_overrides(run_dir: Path, extra: list[str]) -> list[str]:
    """Command-line overrides that continue the run in ``run_dir``: its own overrides, then ``extra``, which may
    change how it runs (``trainer.max_epochs``, ``logger``, ``eval``, ...) but not what it trains
    (:data:`FIXED_ON_RESUME`)."""
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise FileNotFoundError(
            f"resume={run_dir}: {saved} not found; give the run directory of a `python -m train` run"
        )
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"resume={run_dir}: {checkpoint} not found; the run ended before its first checkpoint"
        )
    skip = ("resume=", "hydra.run.dir=", "paths.output_dir=")
    original = [str(o) for o in OmegaConf.load(saved) if not str(o).startswith(skip)]
    before = {_override_key(o): o for o in original}
    for override in extra:
        key = _override_key(override)
        if _fixed(key) and before.get(key, "").lstrip("+~") != override.lstrip("+~"):
            was = before.get(key, f"{key} at its default")
            raise OutputDirError(
                f"resume={run_dir} cannot change {key} ({was} -> {override}): a resumed run continues the same "
                "experiment; start a new run for the new setting"
            )
    return [*original, *extra, f"hydra.run.dir={run_dir}", f"resume={run_dir}"]

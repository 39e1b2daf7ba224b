"""Config of ``python -m evaluation``: schema, and composition on top of a training run's config.

``conf/evaluate.yaml`` composes the same groups as training (data, model, head, eval, trainer,
paths). With ``checkpoint=<run>/checkpoints/last.ckpt`` the run's own ``<run>/config.yaml``
supplies data, model, head and eval (plus its experiment name, precision and cache folder), so the
checkpoint is scored exactly as the run scored it; command-line overrides still win, and a group
chosen on the command line (``eval=clean``) replaces the run's version of that group.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import conf
from train.config import DataConfig, EvalConfig, HeadConfig, LoggerConfig, ModelConfig, PathsConfig

log = logging.getLogger(__name__)

CONFIG_DIR = str(Path(conf.__file__).parent)
RUN_GROUPS = ("data", "model", "head", "eval")  # taken from the run's config.yaml
RUN_NODE = "from_run"


@dataclass
class EvaluateConfig:
    checkpoint: str | None = None  # last.ckpt of a `python -m train` run
    save_logits: bool = False  # write logits/<variant>.npz
    output_dir: str = "outputs/eval"  # conf/evaluate.yaml adds a timestamp
    experiment: str = "default"  # the run's experiment (results.csv model column, metrics.json)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer keyword arguments
    paths: PathsConfig = field(default_factory=PathsConfig)
    # logger=wandb: the evaluation is its own W&B run (job_type eval)
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(name="none"))


def register_configs() -> None:
    """Make the schema available to Hydra as ``evaluate_schema``."""
    ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def run_config_path(checkpoint: Path) -> Path:
    """``<run>/checkpoints/last.ckpt`` -> ``<run>/config.yaml``."""
    return checkpoint.parent.parent / "config.yaml"


def run_node(run_cfg: DictConfig, replaced: set[str]) -> dict[str, Any]:
    """The parts of a run's config that evaluation inherits, minus the groups in ``replaced``."""
    node: dict[str, Any] = {g: run_cfg[g] for g in RUN_GROUPS if g in run_cfg and g not in replaced}
    if "eval" in node:
        # the run's per-epoch cap is not how its final evaluation scored: that read every image
        node["eval"] = OmegaConf.merge(node["eval"], {"max_images": None})
    node["experiment"] = run_cfg.get("experiment", "default")
    if "trainer" not in replaced and run_cfg.get("trainer", {}).get("precision") is not None:
        node["trainer"] = {"precision": run_cfg.trainer.precision}
    if "paths" not in replaced and run_cfg.get("paths", {}).get("cache_dir") is not None:
        node["paths"] = {"cache_dir": run_cfg.paths.cache_dir}
    return node


def compose_config(args: list[str]) -> DictConfig:
    """Compose ``conf/evaluate.yaml`` with the command-line ``args`` (Hydra override syntax),
    layered over the checkpoint's run config when there is one.

    Raises:
        FileNotFoundError: ``checkpoint=`` names a missing file.
        ValueError: a ``hydra.*`` override, which composition would ignore.
    """
    register_configs()
    overrides = OverridesParser.create().parse_overrides(args)
    given = {o.key_or_group: o for o in overrides}
    for key in given:
        if key.split(".")[0].split("/")[0] == "hydra":
            raise ValueError(
                f"{key} has no effect on `python -m evaluation` (it composes its config without Hydra's job "
                f"runner): choose the results folder with output_dir=<folder>"
            )
        if key == "paths.output_dir":
            raise ValueError(
                "paths.output_dir is a training run's folder; choose where `python -m evaluation` writes "
                "with output_dir=<folder>"
            )
    extra: list[str] = []
    if "checkpoint" in given and given["checkpoint"].value() not in (None, "null"):
        checkpoint = Path(str(given["checkpoint"].value()))
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"checkpoint={checkpoint} not found; give a training run's <run dir>/checkpoints/last.ckpt"
            )
        run_config = run_config_path(checkpoint)
        if run_config.is_file():
            replaced = {g for g in (*RUN_GROUPS, "trainer", "paths") if g in given}
            node = run_node(OmegaConf.load(run_config), replaced)
            ConfigStore.instance().store(group=RUN_NODE, name="run", node=node, package="_global_")
            extra.append(f"+{RUN_NODE}=run")
            log.info("config of %s from %s", checkpoint, run_config)
        else:
            log.warning("%s not found: data, model and head come from the command line only", run_config)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("evaluate", overrides=[*args, *extra])

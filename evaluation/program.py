"""The evaluation program: config -> model (checkpoint or timm weights) -> every variant -> files.

It reuses training's parts (data module, classifier module, evaluation suite and callback,
``Trainer.validate``), so a training run's ``last.ckpt`` scores exactly as the run's own final
evaluation did, on one device or many.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import timm.models
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from evaluation.callback import VariantEvaluator
from evaluation.compare.sources import Run
from evaluation.config import EvaluateConfig, run_config_path
from evaluation.logits import save_logits
from evaluation.plots import PlotWriter
from evaluation.progress import VariantProgressBar
from evaluation.results import write_scores
from evaluation.suite import build_data
from evaluation.wandb_logging import log_final
from train.config import MixupConfig, OptimConfig
from train.heads import create_head
from train.loggers import create_logger, restore_wandb_environment, run_tags, wandb_environment
from train.module import ClassifierModule, own_weights
from train.program import augment_name, corruption_references, generated_scorer
from train.run_dir import OutputDirError, check_writable, flatten, previous_group, write_config
from train.validate import check_trainer_args, resolve_precision

log = logging.getLogger("evaluation")

RESULT_FILES = ("metrics.json", "history.csv", "results.csv")


def classifier_key(module: ClassifierModule) -> str:
    """Name of the classifier layer's weight inside ``module.classifier`` (e.g. ``fc.weight``)."""
    layer = module.classifier.get_classifier()
    return next(f"{name}.weight" for name, m in module.classifier.named_modules() if m is layer)


def check_class_count(state: dict[str, torch.Tensor], key: str, what: str, num_classes: int) -> None:
    """The classifier weight ``state[key]`` [K, ...] must have one row per data class."""
    if key in state and state[key].shape[0] != num_classes:
        raise ValueError(
            f"{what} has {state[key].shape[0]} classes but the data has {num_classes}; evaluate it on "
            f"the data it was trained for (data=..., data.root=..., data.classes=<wnid list>)"
        )


def load_weights(module: nn.Module, state: dict[str, Any], what: str, hint: str) -> None:
    """Load every weight of ``module`` from ``state``; one clear line when they do not fit."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a shape differs
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise ValueError(f"{what} does not fit this model ({(lines or [str(err)])[0]}); {hint}") from None
    problems = [
        f"{len(keys)} {kind} keys, e.g. {keys[0]}"
        for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys))
        if keys
    ]
    if problems:
        raise ValueError(f"{what} does not fit this model ({'; '.join(problems)}); {hint}")


def build_model(conf: EvaluateConfig, num_classes: int) -> ClassifierModule:
    """The classifier with the weights to evaluate: a training checkpoint, or a timm weights file
    (``model.pretrained``) checked to have one output per data class."""
    if conf.checkpoint is None and not conf.model.pretrained:
        raise ValueError(
            "nothing to evaluate: give checkpoint=<run dir>/checkpoints/last.ckpt "
            "or model.name=<timm model> model.pretrained=<weights file>"
        )
    model_cfg = replace(conf.model, pretrained=None)  # weights are loaded below, checked first
    if conf.checkpoint is None:  # EMA weights exist only in training checkpoints
        model_cfg = replace(model_cfg, ema=replace(model_cfg.ema, enabled=False))
    module = ClassifierModule(
        model_cfg, create_head(**vars(conf.head)), OptimConfig(), MixupConfig(), num_classes
    )
    key = classifier_key(module)
    if conf.checkpoint is not None:
        what = f"checkpoint={conf.checkpoint}"
        checkpoint = torch.load(conf.checkpoint, map_location="cpu", weights_only=False)  # own run's file
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(
                f"{what} is not a `python -m train` checkpoint; for timm weights use model.pretrained=<file>"
            )
        state = own_weights(checkpoint["state_dict"])
        check_class_count(state, f"classifier.{key}", what, num_classes)
        load_weights(module, state, what, "give the model.name and model.ema of the run that wrote it")
    else:
        what = f"model.pretrained={conf.model.pretrained}"
        if not Path(conf.model.pretrained).is_file():
            raise FileNotFoundError(f"{what} not found; give a local timm weights file (.pth, .safetensors)")
        state = timm.models.load_state_dict(conf.model.pretrained)
        check_class_count(state, key, what, num_classes)
        load_weights(module.classifier, state, what, "give the model.name these weights belong to")
    module.eval()
    return module


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score every configured variant; rank 0 writes ``metrics.json``, ``results.csv``,
    ``results.txt``, ``history.csv``, ``config.yaml`` (and ``logits/``) to ``output_dir``.
    Returns the flat metrics (``val/<variant>/<metric>`` plus ``experiment``)."""
    conf: EvaluateConfig = OmegaConf.to_object(cfg)
    trainer_args = dict(conf.trainer)
    check_trainer_args(trainer_args)
    output_dir = Path(conf.output_dir)
    check_output_dir(output_dir)
    c_references = corruption_references(conf.eval.c_normaliser, conf.eval.variants)
    data, suite = build_data(conf)
    if conf.eval.max_images is not None:
        log.warning(
            "eval.max_images=%d: every variant is scored on a fixed subset of at most that many images "
            "(a quick look; not comparable with full results)",
            conf.eval.max_images,
        )
        data.max_eval_images, data.cap_validate = conf.eval.max_images, True
    module = build_model(conf, data.num_classes)

    output_dir.mkdir(parents=True, exist_ok=True)
    evaluator = VariantEvaluator(suite, output_dir, c_references, generated_scorer(conf.eval, suite))
    trainer_args["precision"] = resolve_precision(trainer_args, torch.cuda.is_available())
    wandb_env = wandb_environment()
    augment = run_augment(conf)
    logger = eval_logger(conf, cfg, output_dir, augment)
    trainer = L.Trainer(
        **trainer_args,
        callbacks=[
            evaluator,
            PlotWriter(evaluator, output_dir),
            *([VariantProgressBar(evaluator)] if trainer_args.get("enable_progress_bar", True) else []),
        ],
        logger=logger or False,
        default_root_dir=str(output_dir),
        use_distributed_sampler=False,
    )
    trainer.validate(module, datamodule=data, verbose=False)
    results = {**evaluator.results, "experiment": conf.experiment}
    if trainer.is_global_zero:
        write_config(output_dir, cfg)
        table = write_scores(
            output_dir, evaluator.results, conf.experiment, conf.model.name, module.classifier, conf.data
        )
        if conf.save_logits:
            files = save_logits(suite, evaluator.last_outputs, output_dir / "logits")
            log.info("logits of %d variants in %s", len(files), output_dir / "logits")
        what = (conf.experiment, conf.head.name, augment, conf.model.name, conf.seed)
        run = Run(f"{conf.experiment}-eval", *what, evaluator.results)
        log_final(logger, run, output_dir / "plots")
        print(table)
        print(f"output directory: {output_dir}")
    if isinstance(logger, WandbLogger):
        logger.experiment.finish()
    restore_wandb_environment(wandb_env)
    return results


def check_output_dir(output_dir: Path) -> None:
    """One line when ``output_dir`` cannot be written or already holds an evaluation (its history.csv
    would mix two models' rows)."""
    check_writable(output_dir, "output_dir=<dir>")
    found = [name for name in RESULT_FILES if (output_dir / name).exists()]
    if found:
        raise OutputDirError(
            f"output_dir={output_dir} already holds results ({found[0]}); choose another output_dir=<dir>"
        )


def run_augment(conf: EvaluateConfig) -> str:
    """The augmentation the checkpoint's run trained with (``none`` without a run config)."""
    config = run_config_path(Path(conf.checkpoint)) if conf.checkpoint else None
    return augment_name(OmegaConf.load(config)) if config and config.is_file() else "none"


def eval_logger(conf: EvaluateConfig, cfg: DictConfig, output_dir: Path, augment: str) -> Logger | None:
    """The configured logger of this evaluation: with ``logger=wandb`` a new W&B run, ``job_type=eval``,
    in the checkpoint run's group (``logger.group`` wins), tagged like training runs plus ``eval``."""
    run_group = previous_group(run_config_path(Path(conf.checkpoint)).parent) if conf.checkpoint else None
    group = conf.logger.group or run_group or conf.experiment
    tags = [
        *run_tags(conf.experiment, conf.head.name, augment, conf.model.name, conf.data.name, conf.seed),
        "eval",
    ]
    flat = {
        **flatten(OmegaConf.to_container(cfg, resolve=True)),
        "head": conf.head.name,
        "augment": augment,
    }
    return create_logger(
        conf.logger, output_dir, f"{conf.experiment}-eval", group, tags, flat, None, job_type="eval"
    )

"""The training program: config -> parts -> fit -> final evaluation of every variant -> summary."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from evaluation.callback import VariantEvaluator
from evaluation.compare.sources import Run
from evaluation.generated import GeneratedCorruptions
from evaluation.logits import save_logits
from evaluation.metrics import ALEXNET, CorruptionReference
from evaluation.plots import PlotWriter
from evaluation.progress import VariantProgressBar
from evaluation.registry import metric_spec
from evaluation.results import write_scores
from evaluation.suite import SEVERITIES, VAL, EvalSuite, build_data
from evaluation.variants import C_VARIANTS, MINIVAL
from evaluation.wandb_logging import declare_metrics, log_final
from train.augmentation import build_augment, write_preview
from train.callbacks import AtomicCheckpointIO, BadFileReport, HealthMonitor, RandomStateCheckpoint
from train.cluster import build_strategy, cluster_plugins, is_rank_zero, resume_checkpoint
from train.config import Config, EvalConfig
from train.data.benchmark import benchmark_hash
from train.data.datamodule import ImageNetDataModule
from train.data.folder import ImageFolderDataset
from train.data.transforms import eval_transform
from train.heads import create_head
from train.loggers import create_logger, restore_wandb_environment, run_tags, wandb_environment
from train.module import ClassifierModule
from train.run_dir import flatten, previous_group, run_id, write_config, write_json, write_provenance
from train.scale import describe, global_batch, scaled_optim
from train.validate import check_optim_and_mixup, check_trainer_args, resolve_precision

log = logging.getLogger("train")


class PhaseTimer:
    """Logs and records the wall time of each phase of a run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(time.perf_counter() - self.start, 2)
                log.info("phase %-16s %8.1f s", name, timer.seconds[name])

        return _Phase()


def group_name(cfg: Config, run_dir: Path) -> str:
    """``logger.group``, else the group the run directory already had (a resumed sweep job stays in
    its sweep's group), else the sweep folder's name in multirun, else the experiment name."""
    if cfg.logger.group:
        return cfg.logger.group
    if saved := previous_group(run_dir):
        return saved
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return Path(hydra_cfg.sweep.dir).name
    return cfg.experiment


def run(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> dict[str, Any]:
    """Train and evaluate as configured; returns the final metrics (also in ``metrics.json``).

    ``extra_callbacks`` are added to the program's own (for embedding the program in other tools).
    """
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    log.info("run directory: %s", run_dir)
    phases = PhaseTimer()
    conf: Config = OmegaConf.to_object(cfg)  # typed, validated copy
    trainer_args = dict(conf.trainer)
    check_trainer_args(trainer_args)
    check_optim_and_mixup(conf.optim, conf.mixup, conf.data.batch_size, trainer_args)
    trainer_args["precision"] = resolve_precision(trainer_args, torch.cuda.is_available())
    c_references = corruption_references(conf.eval.c_normaliser, conf.eval.variants)
    head = create_head(**vars(conf.head))
    L.seed_everything(conf.seed, workers=True)

    with phases("data"):
        data, suite = build_data(conf)
        data.max_eval_images = conf.eval.max_images
    data_hash = benchmark_hash(data.root) if conf.data.name == "benchmark" else None

    with phases("augment_setup"):
        augment, augment_cfg = build_augment(
            cfg.augment,
            data.root / "train",  # pretraining reads image files: with shards only, give weights
            data.cache_dir,
            conf.data.image_size,
            conf.augment_pretrain,
        )
    module = ClassifierModule(
        conf.model, head, conf.optim, conf.mixup, num_classes=data.num_classes, augment=augment
    )
    rank_zero = is_rank_zero()  # run files and W&B are rank 0's (DDP ranks re-run this program)
    wandb_env = wandb_environment()  # restored at the end: each run in a process is its own
    wandb_id = run_id(run_dir) if rank_zero else None
    group = group_name(conf, run_dir)
    provenance = {"git_commit": None}
    if rank_zero:
        cfg.paths.output_dir = str(run_dir)  # the real folder, also when hydra.run.dir= chose it
        write_config(run_dir, cfg)
        provenance = write_provenance(
            run_dir,
            {
                "benchmark_sha256": data_hash,
                "data_root": str(data.root),
                "experiment": conf.experiment,
                "wandb_run_id": wandb_id,
                "wandb_group": group,
            },
        )
    tags = run_tags(
        conf.experiment, conf.head.name, augment_name(cfg), conf.model.name, conf.data.name, conf.seed
    )
    flat_config = {
        **flatten(OmegaConf.to_container(cfg, resolve=True)),
        "head": conf.head.name,
        "augment": augment_name(cfg),
        "benchmark_sha256": data_hash,
        "git_commit": provenance["git_commit"],
        "trainer.precision": trainer_args["precision"],  # the one used, not the config's null
    }
    logger = create_logger(conf.logger, run_dir, conf.experiment, group, tags, flat_config, wandb_id)
    declare_metrics(logger)

    evaluator = VariantEvaluator(suite, run_dir, c_references, generated_scorer(conf.eval, suite))
    checkpoints = ModelCheckpoint(  # checkpoints/last.ckpt, replaced atomically after every epoch
        dirpath=run_dir / "checkpoints",
        filename="last",
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,  # also epochs without an evaluation (eval.every_n_epochs > 1)
        enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [
        checkpoints,
        RandomStateCheckpoint(),
        HealthMonitor(),
        BadFileReport(run_dir),
        evaluator,
        PlotWriter(evaluator, run_dir),
        *extra_callbacks,
    ]
    if suite.source(MINIVAL) is not None:  # model selection reads minival only, never a test set
        key = f"val/{MINIVAL}/top1"
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                filename="best",
                monitor=key,
                mode=metric_spec(key).mode,
                save_top_k=1,
                enable_version_counter=False,
            )
        )
    if logger is not None:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if trainer_args.get("enable_progress_bar", True):
        callbacks.append(VariantProgressBar(evaluator))
    trainer_args["strategy"] = build_strategy(trainer_args.get("strategy", "auto"))
    trainer = L.Trainer(
        **trainer_args,
        callbacks=callbacks,
        logger=logger if logger is not None else False,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
        default_root_dir=str(run_dir),
        check_val_every_n_epoch=conf.eval.every_n_epochs,
        use_distributed_sampler=False,
    )
    module.optim_cfg = scaled_optim(conf.optim, global_batch(conf.data.batch_size, trainer))
    if trainer.is_global_zero:
        log.info(describe(conf.data.batch_size, trainer, conf.optim, module.optim_cfg))
    resume_from = resume_checkpoint(run_dir, bool(conf.resume))  # also a requeued SLURM job's
    if augment is not None and trainer.is_global_zero:
        preview = write_preview(
            augment_cfg,
            preview_images(data, conf.data.image_size),
            run_dir / "plots" / "augment_preview.png",
        )
        if preview is not None and isinstance(logger, WandbLogger):
            logger.log_image(key="plots/augment_preview", images=[str(preview)])
    with phases("train"):
        trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None)
    with phases("final_eval"):
        data.eval_sources = evaluator.plan_final(trainer)  # what the last epoch scored is carried over
        trainer.validate(module, datamodule=data, verbose=False)
    results = {**evaluator.results, "experiment": conf.experiment}
    if trainer.is_global_zero:
        table = write_scores(
            run_dir, evaluator.results, conf.experiment, conf.model.name, module.classifier, conf.data
        )
        if conf.eval.save_logits:
            save_logits(suite, evaluator.last_outputs, run_dir / "logits")
        variant = (conf.experiment, conf.head.name, augment_name(cfg), conf.model.name, conf.seed)
        log_final(logger, Run(conf.experiment, *variant, evaluator.results), run_dir / "plots")
        write_json(run_dir / "phases.json", phases.seconds)
        print(table)
        print(f"run directory: {run_dir}")
    if logger is not None and hasattr(logger, "experiment") and conf.logger.name == "wandb":
        logger.experiment.finish()
    restore_wandb_environment(wandb_env)
    return results


def preview_images(data: ImageNetDataModule, size: int, n: int = 8) -> torch.Tensor:
    """``n`` training images of different classes, centre-cropped to ``size``: [n,3,size,size] in [0,1]."""
    samples = data.train_samples[:: max(1, len(data.train_samples) // n)][:n]
    dataset = ImageFolderDataset(samples, eval_transform(replace(data.cfg, image_size=size, crop_pct=1.0)))
    return torch.stack([dataset[i][0] for i in range(len(samples))])


def generated_scorer(cfg: EvalConfig, suite: EvalSuite) -> GeneratedCorruptions | None:
    """The on-the-fly ImageNet-C/P scorer when ``imagenet-c-gen`` or ``imagenet-p`` is configured."""
    val = suite.source(VAL)
    names = {v.name for v in val.variants} if val is not None else set()
    if not names & {"imagenet-c-gen", "imagenet-p"}:
        return None
    return GeneratedCorruptions(
        len(val.dataset),
        seed=cfg.seed,
        grid_images=cfg.c_grid_images,
        p_images=cfg.p_images if "imagenet-p" in names else 0,
        score_c="imagenet-c-gen" in names,
    )


def corruption_references(
    normaliser: str, variants: Sequence[str] = C_VARIANTS
) -> dict[str, CorruptionReference | None]:
    """``eval.c_normaliser`` for each ImageNet-C variant: AlexNet's constants, none (raw errors), or a
    reference run's own errors on the same variant (its generated C normalises generated C: the
    corruption code differs from the released images'), for the corruptions it scored at all five
    severities; a missing one is warned about for the C variants of ``variants`` only."""
    if normaliser in ("alexnet", "none"):
        return dict.fromkeys(C_VARIANTS, ALEXNET if normaliser == "alexnet" else None)
    if not normaliser.startswith("run:"):
        raise ValueError(f"eval.c_normaliser={normaliser!r} is unknown; use alexnet, none or run:<run dir>")
    metrics_file = Path(normaliser[4:]) / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(
            f"eval.c_normaliser={normaliser}: {metrics_file} not found; give a finished run"
        )
    scores = json.loads(metrics_file.read_text())
    clean = scores.get("val/imagenet/top1")
    references: dict[str, CorruptionReference | None] = {}
    for variant in C_VARIANTS:
        errors: dict[str, list[float]] = {}
        for key, value in sorted(scores.items()):
            parts = key.split("/")
            if len(parts) == 5 and parts[1] == variant and parts[4] == "err":
                errors.setdefault(parts[2], []).append(value / 100)
        errors = {c: e for c, e in errors.items() if len(e) == SEVERITIES}
        if not errors and variant in variants:
            log.warning(
                "eval.c_normaliser=%s scored no %s: %s reports errors only, no CE",
                normaliser,
                variant,
                variant,
            )
        references[variant] = CorruptionReference(errors, None if clean is None else 1 - clean / 100)
    if not any(r.errors for r in references.values()):
        raise ValueError(
            f"eval.c_normaliser={normaliser}: that run scored no ImageNet-C errors ({', '.join(C_VARIANTS)})"
        )
    return references


def augment_name(cfg: DictConfig) -> str:
    """Short name of the configured augmentation (``none`` when off)."""
    target = cfg.augment.get("_target_") if cfg.augment else None
    return target.rsplit(".", 1)[-1].lower() if target else "none"

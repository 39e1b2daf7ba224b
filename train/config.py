"""Structured config schema: every key the training program accepts, with its type and default.

Registered in Hydra's ConfigStore as ``base_config`` and used as the first entry of the defaults
list in ``conf/config.yaml``, so an unknown key or an ill-typed value fails at composition time,
before any work starts. Groups whose options take different arguments (``augment``) or mirror a
third-party signature (``trainer``: Lightning ``Trainer``) are open dicts that are checked
against their target's signature in :mod:`train.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException


@dataclass
class DataConfig:
    name: str = "benchmark"  # "benchmark" (embedded, generated) or "imagenet" (folder layout)
    root: str | None = None  # dataset root; the benchmark is generated into the cache dir when null
    seed: int = 0  # benchmark generation seed (not the training seed)
    classes: str | None = (
        None  # wnid list file; null: timm's 1000 for imagenet, classes.txt for the benchmark
    )
    # wnid list that ReaL's real.json and ImageNetV2's folder numbers index; null: <root>/classes.txt if there
    # (the benchmark's; the shard writer copies it), else timm's 1000
    label_classes: str | None = None
    real_labels: str | None = None  # ReaL json; null: timm's bundled copy / <root>/real.json
    image_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # RandomResizedCrop area range
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float | None = None
    auto_augment: str | None = None  # timm auto-augment string, e.g. "rand-m9-mstd0.5" or "augmix-m5-w4-d2"
    batch_size: int = 64  # per device
    eval_batch_size: int | None = None  # per device; null: 2 x batch_size
    num_workers: int = 4
    minival_fraction: float = 0.01  # held out of train per class (deterministic), scored as "minival"
    backend: str = "torchvision"  # training decode + augmentation: "torchvision" (PIL, timm) or "dali"
    shards: str | None = None  # folder from `python -m train.shards`: train and its variants read from there
    # more training images, <folder>/<wnid>/<file> each (python -m augment generate's <out>/EDSR, <out>/CAE);
    # copies of minival images are left out
    extra_train: list[str] = field(default_factory=list)


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: float = 0.9998
    warmup: bool = True


@dataclass
class ModelConfig:
    name: str = "resnet50"  # any timm model name
    pretrained: str | None = None  # local weights file (no hub downloads)
    num_classes: int | None = None  # null: the data's class count; set to check against it
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    channels_last: bool = True
    compile: bool = False
    ema: EmaConfig = field(default_factory=EmaConfig)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments


@dataclass
class HeadConfig:
    name: str = "softmax"  # "softmax" (cross-entropy) or "sigmoid" (binary cross-entropy over all classes)
    smoothing: float = 0.0
    target_threshold: float | None = None  # sigmoid only: binarise targets above this value
    reduction: str = "mean"  # sigmoid only: "mean" over B*K elements or "sum" over classes, mean over batch
    bias_init: str = "prior"  # sigmoid only: "prior" (-log(K-1): every p starts at 1/K) or "zero"


@dataclass
class MixupConfig:
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"

    @property
    def enabled(self) -> bool:
        """Whether mixup or cutmix mixes the batch at all."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclass
class OptimConfig:
    name: str = "sgd"  # "sgd" (Nesterov), "adamw" or "lamb" (timm optimiser names)
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    clip_grad: float | None = None
    lr_scaling: str = "none"  # "none" (lr as given) or "linear" (lr x global batch / lr_base_batch)
    lr_base_batch: int = 256  # the global batch at which optim.lr holds under linear scaling


@dataclass
class AugmentPretrainConfig:
    budget_s: float = 450.0  # cap of the built-in EDSR + CAE pretraining (EDSR stops at +1 dB; cached)
    max_images: int = 2048  # training images it uses
    precision: str = "auto"  # bf16 steps where fast (CUDA, CPUs with AMX or AVX512-BF16), else fp32


@dataclass
class LoggerConfig:
    name: str = "wandb"  # "wandb", "csv" or "none"
    project: str = "sigmoid-robustness"
    entity: str | None = None
    group: str | None = None  # null: the sweep name in multirun, else the experiment name
    mode: str = (
        "auto"  # "auto" (online if an API key and the server answer, else offline), "online", "offline"
    )
    tags: list[str] = field(default_factory=list)
    log_images: bool = True


@dataclass
class EvalConfig:
    variants: list[str] = field(default_factory=lambda: ["minival", "imagenet", "imagenet-real"])
    every_n_epochs: int = 1
    max_images: int | None = None  # per-epoch cap per variant (fixed subset); the end of training scores all
    strict: bool = False  # a variant missing on disk is an error instead of a warning
    paths: dict[str, str] = field(default_factory=dict)  # variant -> folder, for releases outside data.root
    c_normaliser: str = "alexnet"  # ImageNet-C: "alexnet", "none" (raw errors) or "run:<run dir>"
    seed: int = 0  # fixes every generated corruption (imagenet-c-gen, imagenet-p) across runs and epochs
    c_grid_images: int = 100  # imagenet-c-gen: val images scored on the full 15x5 grid at the end
    p_images: int = 16  # imagenet-p: val images turned into perturbation sequences per evaluation
    save_logits: bool = True  # training: logits/<variant>.npz of the final evaluation (compare's bootstrap)


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    cache_dir: str | None = None  # null: the user cache dir (env SIGROB_CACHE_DIR overrides)


@dataclass
class Config:
    experiment: str = "default"
    seed: int = 0
    resume: str | None = None  # run directory of a killed run to continue
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    augment: dict[str, Any] = field(default_factory=dict)  # {_target_: ..., args}; empty: no augmentation
    augment_pretrain: AugmentPretrainConfig = field(default_factory=AugmentPretrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # lightning.Trainer keyword arguments
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)


def register_configs() -> None:
    """Make the schema available to Hydra as ``base_config``."""
    ConfigStore.instance().store(name="base_config", node=Config)


def error_line(error: BaseException) -> str:
    """One line for a command-line error: the message with its whitespace folded, plus the informative
    error Hydra wraps (an unknown key, a wrong type); an error re-raised from a DataLoader worker is
    reduced to its own message (torch puts the worker's traceback in front of it)."""
    message = str(error)
    lines = message.splitlines()
    if message.startswith("Caught ") and len(lines) > 1 and lines[1].startswith("Original Traceback"):
        last_frame = max((i for i, line in enumerate(lines) if line.startswith(" ")), default=1)
        message = "\n".join(lines[last_frame + 1 :]).split(": ", 1)[-1]  # after "package.module.Error: "
    message = " ".join(message.split())
    cause = error.__cause__
    if isinstance(error, HydraException) and cause is not None:
        message = f"{message} ({' '.join(str(cause).split())})"
    return message

"""Checks, before any work, of config values their targets would only reject late (``trainer`` against
``lightning.Trainer``'s signature, ``optim.name``, ``mixup.mode``)."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any

import lightning as L
import timm.optim

from train.config import MixupConfig, OptimConfig

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


MIXUP_MODES = ("batch", "pair", "elem")  # timm.data.Mixup


def matches(value: Any, annotation: Any) -> bool | None:
    """Whether ``value`` fits a type annotation made of classes, ``None``, ``Optional`` / ``Union``,
    ``Literal`` and parametrised builtins (checked by their container class); None where it cannot tell."""
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        results = [matches(value, arm) for arm in args]
        return True if any(results) else (None if None in results else False)
    if origin is not None:
        annotation = origin
    if not isinstance(annotation, type):
        return None
    if isinstance(value, bool) and annotation is not bool:
        return False  # True is an int to Python, not a number of epochs
    return isinstance(value, annotation) or (annotation is float and isinstance(value, int))


def check_trainer_args(trainer_cfg: dict[str, Any]) -> None:
    """Every ``trainer.<key>`` must be a ``lightning.Trainer`` argument not owned by the program, with a value
    of the type the Trainer declares for it (where the annotation can be checked)."""
    accepted = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    hints = typing.get_type_hints(L.Trainer.__init__)
    for key, value in trainer_cfg.items():
        if key in PROGRAM_OWNED:
            raise ValueError(f"trainer.{key} is set by the training program; remove it from the config")
        if key not in accepted:
            raise ValueError(
                f"trainer.{key} is not a lightning.Trainer argument; see `help(lightning.Trainer)`"
            )
        instantiated_later = isinstance(value, dict) and "_target_" in value  # e.g. an FSDP strategy
        if key in hints and not instantiated_later and matches(value, hints[key]) is False:
            expected = str(hints[key]).replace("typing.", "").replace("NoneType", "None")
            raise ValueError(f"trainer.{key}={value!r} does not fit lightning.Trainer's {key}: {expected}")


def check_optim_and_mixup(
    optim: OptimConfig, mixup: MixupConfig, batch_size: int, trainer_args: dict[str, Any]
) -> None:
    """``optim.name`` must be a timm optimiser (with an optional ``lookahead_`` prefix), ``mixup.mode`` a timm
    Mixup mode, the batch even when mixup/cutmix is on (timm pairs each image with its mirror in the batch) and
    at most one of ``optim.clip_grad`` and ``trainer.gradient_clip_val`` set; checked before any work (timm and
    Lightning would only fail when training starts, or not at all)."""
    known = getattr(timm.optim, "get_optimizer_info", None)  # timm >= 1.0.12
    if known is not None:
        try:
            known(optim.name.lower().removeprefix("lookahead_"))
        except ValueError:
            raise ValueError(
                f"optim.name={optim.name!r} is not a timm optimiser; e.g. sgd, adamw, lamb "
                "(timm.optim.list_optimizers() lists them)"
            ) from None
    if mixup.mode not in MIXUP_MODES:
        raise ValueError(f"mixup.mode={mixup.mode!r} is unknown; use one of {list(MIXUP_MODES)}")
    if mixup.enabled and batch_size % 2:
        raise ValueError(
            f"data.batch_size={batch_size} is odd; mixup/cutmix pairs the images of a batch: give an even batch size"
        )
    if optim.clip_grad is not None and trainer_args.get("gradient_clip_val"):
        raise ValueError(
            f"optim.clip_grad={optim.clip_grad} and trainer.gradient_clip_val={trainer_args['gradient_clip_val']} "
            "are both set; keep one (optim.clip_grad clips the global norm)"
        )


def resolve_precision(trainer_cfg: dict[str, Any], has_cuda: bool) -> str:
    """``trainer.precision``, or bf16-mixed when training on a GPU and 32-true on the CPU."""
    if trainer_cfg.get("precision") is not None:
        return str(trainer_cfg["precision"])
    on_gpu = has_cuda and trainer_cfg.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu else "32-true"

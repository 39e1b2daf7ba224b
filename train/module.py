"""LightningModule: a timm backbone trained with a softmax or sigmoid head.

Data flow of one training step: batch on device -> augment (no grad, outside the module tree) ->
mixup/cutmix (soft targets) -> normalise -> backbone -> logits -> head.loss.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import timm
import torch
from timm.data import Mixup, resolve_data_config
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch import Tensor, nn

from augment.base import RandomAugmentation
from evaluation.distributed import gather_objects
from train.augmentation import share_networks
from train.config import MixupConfig, ModelConfig, OptimConfig
from train.heads import SigmoidHead, SoftmaxHead

log = logging.getLogger(__name__)


def own_weights(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's ``state_dict`` without ``forward_model.*``: the second copy of the classifier that
    checkpoints written before 2026-12-06 hold (then a registered submodule), so they still load."""
    return {k: v for k, v in state.items() if not k.startswith("forward_model.")}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


def create_classifier(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """A timm model by name; ``pretrained`` is a local weights file (no hub download)."""
    if cfg.num_classes is not None and cfg.num_classes != num_classes:
        raise ValueError(
            f"model.num_classes={cfg.num_classes} but the data has {num_classes} classes; "
            f"remove model.num_classes or choose matching data"
        )
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    if cfg.pretrained:
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(cfg.pretrained)})
    try:
        model = timm.create_model(
            cfg.name,
            num_classes=num_classes,
            drop_rate=cfg.drop_rate,
            drop_path_rate=cfg.drop_path_rate,
            **kwargs,
        )
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"model.name={cfg.name!r} is not a timm model; see timm.list_models()") from err
        raise
    return model


class ClassifierModule(L.LightningModule):
    """timm classifier + head + optimiser/schedule (+ EMA weights evaluated in place of the raw ones).

    Args:
        model: the ``model`` config.
        head: the head object (loss, probabilities, bias init).
        optim: the ``optim`` config.
        mixup: the ``mixup`` config (off when both alphas are 0).
        num_classes: K, the length of the data's class list.
        augment: optional batch augmentation on [B,3,H,W] in [0,1]; kept outside the module tree
            (no gradients, no EMA, no SyncBatchNorm, invisible to DDP).
    """

    def __init__(
        self,
        model: ModelConfig,
        head: SoftmaxHead | SigmoidHead,
        optim: OptimConfig,
        mixup: MixupConfig,
        num_classes: int,
        augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model_cfg = model
        self.optim_cfg = optim
        self.num_classes = num_classes
        self.head = head
        self.classifier = create_classifier(model, num_classes)
        self.head.init_bias(self.classifier.get_classifier())
        data_cfg = resolve_data_config({}, model=self.classifier)
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, 3, 1, 1), persistent=False)
        if model.channels_last:
            self.classifier = self.classifier.to(memory_format=torch.channels_last)
        self.ema = (
            ModelEmaV3(self.classifier, decay=model.ema.decay, use_warmup=model.ema.warmup)
            if (model.ema.enabled)
            else None
        )
        self.mixup = (
            Mixup(
                mixup_alpha=mixup.mixup_alpha,
                cutmix_alpha=mixup.cutmix_alpha,
                prob=mixup.prob,
                switch_prob=mixup.switch_prob,
                mode=mixup.mode,
                label_smoothing=head.smoothing,
                num_classes=num_classes,
            )
            if mixup.enabled
            else None
        )
        object.__setattr__(self, "augment", augment)  # not a submodule on purpose
        self.resumed_augment_state: Any = None
        self.resumed_augment_states: list[Any] | None = None
        # the (compiled) classifier, not a submodule: its weights are classifier.*, whether compiled or not
        object.__setattr__(
            self, "forward_model", torch.compile(self.classifier) if model.compile else self.classifier
        )
        self.ema_step = 0  # the optimizer step the EMA weights last followed

    # --- forward -----------------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] -> normalised with the model's mean/std (channels_last if configured)."""
        images = (images - self.mean) / self.std
        if self.model_cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, images: Tensor) -> Tensor:
        """[B,3,H,W] pixels in [0,1] -> [B,K] logits of the trained weights."""
        return self.forward_model(self.normalize(images))

    def eval_forward(self, images: Tensor) -> Tensor:
        """[B,3,H,W] pixels in [0,1] -> [B,K] logits of the evaluated weights (EMA when on)."""
        model = self.ema.module if self.ema is not None else self.forward_model
        return model(self.normalize(images))

    # --- training ------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        """Move the augmentation to the device; under DDP give every rank rank 0's DeepAugment networks and
        its own stream (seed + rank); then restore a resumed run's augmentation state (device generators
        exist only now)."""
        if self.augment is None:
            return
        self.augment.to(self.device)
        if self.trainer.world_size > 1:
            replaced = share_networks(self.augment, self.trainer.strategy.broadcast)
            if replaced:
                log.warning(
                    "rank %d: DeepAugment networks %s differed from rank 0's (this node's cache pretrained its "
                    "own); using rank 0's. A shared SIGROB_CACHE_DIR or augment.edsr_weights/cae_weights avoid it",
                    self.trainer.global_rank,
                    replaced,
                )
            for part in self.augment.modules():
                if isinstance(part, RandomAugmentation):
                    part.reseed(part.seed + self.trainer.global_rank)
        if self.resumed_augment_state is not None:
            self.augment.set_rng_state(self.resumed_augment_state)
            self.resumed_augment_state = None
        elif self.resumed_augment_states is not None:  # a DDP run: this rank's own stream
            if len(self.resumed_augment_states) == self.trainer.world_size:
                self.augment.set_rng_state(self.resumed_augment_states[self.trainer.global_rank])
            else:
                log.warning(
                    "checkpoint holds augmentation states of %d processes, this run has %d: "
                    "augmentation streams restart from seed + rank",
                    len(self.resumed_augment_states),
                    self.trainer.world_size,
                )
            self.resumed_augment_states = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.augment is not None:
            state = self.augment.get_rng_state()
            if self.trainer.world_size > 1:  # rank 0 writes the file: it carries every rank's state
                checkpoint["augment_rng_states_by_rank"] = gather_objects(state)
            else:
                checkpoint["augment_rng_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.resumed_augment_state = checkpoint.get("augment_rng_state")
        self.resumed_augment_states = checkpoint.get("augment_rng_states_by_rank")
        checkpoint["state_dict"] = own_weights(checkpoint["state_dict"])
        # The schedule is a function of the step and this run's config (lr_scheduler_step): a resumed run with
        # another trainer.max_epochs follows the new length instead of the saved one (which ended at lr 0).
        checkpoint["lr_schedulers"] = [{} for _ in checkpoint.get("lr_schedulers", [])]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Augment (on the device, no grad) -> mixup -> forward -> head loss. Only training batches
        pass here, so validation batches are never augmented."""
        images, target = batch[0], batch[1]
        if self.augment is not None:  # in the input precision, outside autocast
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                images = self.augment(images)
        if self.mixup is not None:
            images, target = self.mixup(images, target)
        logits = self(images)
        loss = self.head.loss(logits, target)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}; "
                f"lower optim.lr or enable optim.clip_grad (the last good checkpoint is kept)"
            )
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=images.shape[0])
        return loss

    def on_train_start(self) -> None:
        """After a resume: the EMA and the learning rate continue from the saved step (the optimizer's saved lr
        belongs to the saved schedule, which a changed trainer.max_epochs replaces)."""
        self.ema_step = self.global_step
        for config in self.trainer.lr_scheduler_configs:
            self.lr_scheduler_step(config.scheduler, None)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The EMA follows every optimizer step (one per ``accumulate_grad_batches`` batches), like timm's."""
        if self.ema is not None and self.global_step != self.ema_step:
            self.ema.update(self.classifier, step=self.global_step)
            self.ema_step = self.global_step

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Returns the [B,K] logits; the evaluation callback gathers and scores them."""
        return self.eval_forward(batch[0])

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        optimizer = create_optimizer_v2(
            self.classifier, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
        )
        total_steps = max(int(self.trainer.estimated_stepping_batches), 1)  # also sets num_training_batches
        batches = self.trainer.num_training_batches
        steps_per_epoch = (
            max(math.ceil(batches / self.trainer.accumulate_grad_batches), 1)
            if math.isfinite(batches)
            else max(total_steps // max(self.trainer.max_epochs or 1, 1), 1)
        )  # warmup_epochs counts epochs, also when trainer.max_steps ends the run earlier
        scheduler = CosineLRScheduler(
            optimizer,
            t_initial=total_steps,
            lr_min=cfg.min_lr,
            warmup_t=int(cfg.warmup_epochs * steps_per_epoch),
            warmup_lr_init=cfg.warmup_lr,
            t_in_epochs=False,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any) -> None:
        scheduler.step_update(num_updates=self.global_step)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """``optim.clip_grad`` (global norm, timm's default), else the trainer's ``gradient_clip_val`` with its
        ``gradient_clip_algorithm`` (norm or value); both set is refused by the config check."""
        if self.optim_cfg.clip_grad is not None:
            gradient_clip_val, gradient_clip_algorithm = self.optim_cfg.clip_grad, "norm"
        if gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=gradient_clip_val,
                gradient_clip_algorithm=gradient_clip_algorithm or "norm",
            )

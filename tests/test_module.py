"""The LightningModule's optimisation against timm's own semantics, on a tiny model and random images."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, TensorDataset

from augment import Noise2Net
from train.config import EmaConfig, MixupConfig, ModelConfig, OptimConfig
from train.heads import SoftmaxHead
from train.module import ClassifierModule

CLASSES = 4


def batches(n: int, batch: int = 4) -> DataLoader:
    """``n`` batches of random 32 px images in [0, 1] with class indices."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n * batch, 3, 32, 32, generator=generator)
    return DataLoader(
        TensorDataset(images, torch.randint(0, CLASSES, (n * batch,), generator=generator)), batch
    )


def module(optim: OptimConfig | None = None, ema: bool = False, augment=None) -> ClassifierModule:
    torch.manual_seed(0)
    model = ModelConfig(name="test_resnet", ema=EmaConfig(enabled=ema, decay=0.9, warmup=False))
    return ClassifierModule(
        model, SoftmaxHead(), optim or OptimConfig(lr=0.05), MixupConfig(), CLASSES, augment=augment
    )


def trainer(**kwargs) -> L.Trainer:
    settings = {
        "accelerator": "cpu",
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**settings, **kwargs})


class EachStep(L.Callback):
    """Records the learning rate each optimizer step applies, and the classifier's weights and (clipped)
    gradients after each step (Lightning zeroes them only when the next accumulation window starts)."""

    def __init__(self) -> None:
        self.weights, self.max_grad, self.grad_norm, self.lrs = [], [], [], []
        self.step = 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: ClassifierModule, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: ClassifierModule, *args) -> None:
        if trainer.global_step == self.step:  # an accumulation batch: no step taken
            return
        self.step = trainer.global_step
        self.weights.append(copy.deepcopy(pl_module.classifier.state_dict()))
        grads = [p.grad for p in pl_module.classifier.parameters()]
        self.max_grad.append(max(float(g.abs().max()) for g in grads))
        self.grad_norm.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))


def test_ema_follows_optimizer_steps_not_batches_under_gradient_accumulation():
    steps = EachStep()
    model = module(ema=True)
    initial = copy.deepcopy(model.classifier)
    trainer(accumulate_grad_batches=2, callbacks=[steps]).fit(model, batches(8))
    assert len(steps.weights) == 4
    reference = ModelEmaV3(initial, decay=0.9)  # timm: one update per optimizer step, counted from 1
    for step, weights in enumerate(steps.weights, start=1):
        initial.load_state_dict(weights)
        reference.update(initial, step=step)
    for name, value in reference.module.state_dict().items():
        torch.testing.assert_close(model.ema.module.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


def test_warmup_counts_epochs_when_max_steps_ends_the_run_early():
    model = module(OptimConfig(lr=0.05, warmup_epochs=1))
    run = trainer(max_epochs=3, max_steps=12)
    run.fit(model, batches(10))
    assert run.global_step == 12
    assert run.lr_scheduler_configs[0].scheduler.warmup_t == 10  # one epoch of 10 steps, not 12 // 3


def test_a_resume_with_more_epochs_follows_the_new_schedule(tmp_path: Path):
    """The saved scheduler ended at lr 0 after its 4 steps; resumed for 8, the cosine spans 8."""
    first = trainer(max_epochs=1)
    first.fit(module(), batches(4))
    first.save_checkpoint(tmp_path / "last.ckpt")
    steps = EachStep()
    model = module()
    trainer(max_epochs=2, callbacks=[steps]).fit(model, batches(4), ckpt_path=tmp_path / "last.ckpt")
    cosine = [0.5 * 0.05 * (1 + torch.cos(torch.tensor(torch.pi * s / 8))).item() for s in range(4, 8)]
    assert steps.lrs == pytest.approx(cosine)  # the lr of steps 5..8 of 8
    assert all(lr > 0 for lr in steps.lrs)


@pytest.mark.parametrize("algorithm", ["value", "norm"])
def test_the_trainers_gradient_clipping_algorithm_is_used(algorithm: str):
    steps = EachStep()
    run = trainer(gradient_clip_val=1e-4, gradient_clip_algorithm=algorithm, callbacks=[steps])
    run.fit(module(), batches(2))
    if algorithm == "value":  # every entry within +-1e-4, the norm of all of them far above
        assert max(steps.max_grad) <= 1e-4 and min(steps.grad_norm) > 1e-3
    else:
        assert max(steps.grad_norm) <= 1e-4 * (1 + 1e-5)


def test_checkpoint_weights_are_the_classifiers_once():
    """The compiled or plain forward model is not a second copy: toggling model.compile keeps the keys."""
    keys = module(ema=True).state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"classifier", "ema"}


def test_a_checkpoint_holding_the_classifier_twice_still_resumes(tmp_path: Path):
    """Checkpoints written while the forward model was a registered submodule hold forward_model.* copies."""
    first = trainer(max_epochs=1)
    first.fit(module(), batches(2))
    first.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    weights = checkpoint["state_dict"]
    copies = {
        f"forward_model.{k.removeprefix('classifier.')}": v
        for k, v in weights.items()
        if k.startswith("classifier.")
    }
    weights.update(copies)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model = module()
    trainer(max_epochs=2).fit(model, batches(2), ckpt_path=tmp_path / "old.ckpt")
    assert model.trainer.global_step == 4


def test_training_batches_are_augmented_and_validation_batches_never():
    """What the classifier sees: a training batch perturbed by the augmentation (Noise2Net on every image), a
    validation batch -- sanity check, every epoch's evaluation, trainer.validate -- exactly its normalised
    pixels."""
    seen: list[tuple[str, torch.Tensor]] = []
    lit = module(augment=Noise2Net(p=1.0, seed=1))

    def record(classifier, args):
        stage = "train" if lit.trainer.training else "val"
        seen.append((stage, args[0].detach().clone()))

    lit.classifier.register_forward_pre_hook(record)
    fit = trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=1)
    fit.fit(lit, batches(2), batches(2))
    fit.validate(lit, batches(2))
    loader = [(images - lit.mean) / lit.std for images, _ in batches(2)]
    train_seen = [x for stage, x in seen if stage == "train"]
    val_seen = [x for stage, x in seen if stage == "val"]
    assert len(train_seen) == 4 and len(val_seen) == 1 + 2 * 2 + 2  # sanity step, two epochs, validate
    for x in val_seen:
        assert min(float((x - batch).abs().max()) for batch in loader) < 1e-6
    for x in train_seen:
        assert min(float((x - batch).abs().mean()) for batch in loader) > 0.05

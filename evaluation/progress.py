"""A validation progress bar that names the variants a loader scores instead of "DataLoader 3"."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from evaluation.callback import VariantEvaluator
from evaluation.suite import VAL


class VariantProgressBar(TQDMProgressBar):
    """Lightning's tqdm bars; each evaluation loader's bar reads e.g. ``Validation imagenet, imagenet-real
    (+ generated C/P)``: the generated corruptions run inside val's batches, which is why those are slow."""

    def __init__(self, evaluator: VariantEvaluator) -> None:
        super().__init__()
        self.evaluator = evaluator

    def on_validation_batch_start(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0 and not trainer.sanity_checking and dataloader_idx < len(self.evaluator.active):
            source = self.evaluator.active[dataloader_idx]
            names = [v.name for v in source.variants if v.kind != "generated"] or [source.key]
            generated = source.key == VAL and self.evaluator.generated is not None
            label = ", ".join(names) + (" (+ generated C/P)" if generated else "")
            self.val_progress_bar.set_description(f"{self.validation_description} {label}")

"""Lightning callback: score every configured variant at each validation and keep the history."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch

from evaluation.distributed import gather_concat, gather_objects
from evaluation.generated import GeneratedCorruptions
from evaluation.metrics import CorruptionReference
from evaluation.scoring import SourceOutput, clean_error, score_suite
from evaluation.suite import VAL, EvalSource, EvalSuite

log = logging.getLogger(__name__)


class VariantEvaluator(L.Callback):
    """Collects the logits of every validation dataloader (one per source), gathers them from all
    ranks without duplicates (the loaders are unpadded shards), scores each variant with the
    model's head and logs ``val/<variant>/<metric>``. Rank 0 appends to ``history.csv``.

    The final evaluation after fit (:meth:`plan_final`) carries over what the last evaluation
    during fit already scored with the same weights: the outputs of every source it read in full
    but val, and ImageNet-P's scores; val is always read again (the final ImageNet-C grid is made
    from its images).

    Args:
        suite: evaluation sources, in the order of the module's validation dataloaders.
        run_dir: where ``history.csv`` is written.
        c_references: ImageNet-C normaliser per C variant (``imagenet-c``, ``imagenet-c-gen``): AlexNet's
            constants by default; None: raw errors.
        generated: on-the-fly ImageNet-C/P scorer fed with the val batches, if configured.
    """

    def __init__(
        self,
        suite: EvalSuite,
        run_dir: Path,
        c_references: Mapping[str, CorruptionReference | None],
        generated: GeneratedCorruptions | None = None,
    ) -> None:
        self.suite = suite
        self.sources = suite.sources
        self.c_references = c_references
        self.generated = generated
        self.history_path = Path(run_dir) / "history.csv"
        self.outputs: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        self.results: dict[str, float] = {}
        self.last_outputs: dict[str, SourceOutput] = {}  # gathered logits of the last evaluation, per source
        self.active: list[EvalSource] = list(self.sources)  # the sources of this pass's loaders, in order
        self.carried: dict[str, SourceOutput] = {}  # outputs taken over unchanged by this pass
        self.carried_scores: dict[str, float] = {}  # scores taken over unchanged (ImageNet-P)
        self.fit_step: int | None = None  # global step of the last evaluation during fit
        self.fit_complete: set[str] = set()  # the sources that evaluation read image for image

    def plan_final(self, trainer: L.Trainer) -> list[EvalSource]:
        """The sources the final evaluation must read; call before it. When the weights are those of
        the last evaluation during fit (same global step, which fixes the EMA weights too), every
        source but val that it read in full keeps its outputs, and ImageNet-P keeps its scores if
        val was read in full (same weights, images and noise seeds: the same logits); otherwise
        every source is read again."""
        keys = {s.key for s in self.sources}
        if self.fit_step != trainer.global_step or VAL not in keys:
            self.active = list(self.sources)
            return self.active
        self.active = [s for s in self.sources if s.key == VAL or s.key not in self.fit_complete]
        self.carried = {k: self.last_outputs[k] for k in self.fit_complete if k != VAL}
        if VAL in self.fit_complete:
            self.carried_scores = {k: v for k, v in self.results.items() if k.startswith("val/imagenet-p/")}
        if trainer.is_global_zero:
            carried = [v.name for s in self.sources if s.key in self.carried for v in s.variants]
            carried += ["imagenet-p"] if self.carried_scores else []
            read = [v.name for s in self.active for v in s.variants if v.name not in carried]
            log.info(
                "final evaluation: %s carried over from step %d; reading %s",
                ", ".join(carried) or "nothing",
                trainer.global_step,
                ", ".join(read),
            )
        return self.active

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.outputs = {i: [] for i in range(len(self.active))}
        self.unreadable: dict[int, set[int]] = {i: set() for i in range(len(self.active))}
        if self.generated is not None:
            self.generated.reset()

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: torch.Tensor,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        readable = batch[3] < 0  # unreadable images leave numerator and denominator
        self.unreadable[dataloader_idx].update(batch[3][~readable].tolist())
        self.outputs[dataloader_idx].append(
            (outputs[readable].detach().float().cpu(), batch[1][readable].cpu(), batch[2][readable].cpu())
        )
        if self.generated is not None and self.active[dataloader_idx].key == VAL:

            def forward(images: torch.Tensor) -> torch.Tensor:  # in the precision validation_step ran in
                with trainer.precision_plugin.val_step_context():
                    return pl_module.eval_forward(images)

            self.generated.collect(
                forward,
                batch[0][readable],
                batch[1][readable],
                batch[2][readable],
                final=trainer.state.fn == "validate",
                sequences=not self.carried_scores,  # ImageNet-P's scores are not carried over
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        outputs: dict[str, SourceOutput] = dict(self.carried)
        complete = set()
        for i, source in enumerate(self.active):
            parts = self.outputs.get(i) or [
                (
                    torch.empty(0, pl_module.num_classes),
                    torch.empty(0, dtype=torch.long),
                    torch.empty(0, dtype=torch.long),
                )
            ]  # a rank whose shard is empty still joins the gather
            logits, target, index = (gather_concat(torch.cat(column)) for column in zip(*parts, strict=True))
            order = index.argsort()
            outputs[source.key] = SourceOutput(logits[order], target[order], index[order])
            unreadable = self.report_unreadable(trainer, source, self.unreadable[i])
            if len(index) + unreadable == len(source.dataset):
                complete.add(source.key)
        results = score_suite(self.suite, outputs, pl_module.head.probs, self.c_references["imagenet-c"])
        if self.generated is not None:
            reference = self.c_references["imagenet-c-gen"]
            for name, scores in self.generated.compute(clean_error(outputs), reference).items():
                results.update({f"val/{name}/{metric}": value for metric, value in scores.items()})
        results.update(self.carried_scores)
        if trainer.state.fn == "fit":
            self.fit_step, self.fit_complete = trainer.global_step, complete
        self.outputs, self.active, self.carried, self.carried_scores = {}, list(self.sources), {}, {}
        self.last_outputs = outputs
        self.results = results
        pl_module.log_dict(
            {k: v for k, v in results.items() if math.isfinite(v)}, rank_zero_only=True
        )  # same on every rank
        if trainer.is_global_zero:
            self.append_history(trainer, results)

    def report_unreadable(self, trainer: L.Trainer, source: EvalSource, indices: set[int]) -> int:
        """Rank 0 appends the unreadable images of a source (gathered from all ranks) to the run dir's
        ``unreadable_eval_files.txt`` as ``<variants>\t<path>`` lines, once per file; returns their number."""
        parts = gather_objects(indices)
        found = sorted(set().union(*parts))
        if found and trainer.is_global_zero:
            names = ",".join(v.name for v in source.variants)
            log.warning(
                "%d unreadable images of %s (%s) left out of their scores", len(found), names, source.key
            )
            listing = self.history_path.parent / "unreadable_eval_files.txt"
            # each epoch's evaluation meets the same files again
            listed = set(listing.read_text().splitlines()) if listing.exists() else set()
            lines = [f"{names}\t{source.dataset.samples[i].path}" for i in found]
            with listing.open("a") as handle:
                handle.writelines(f"{line}\n" for line in lines if line not in listed)
        return len(found)

    def append_history(self, trainer: L.Trainer, results: dict[str, float]) -> None:
        """One row per variant with its metrics, tagged with epoch, step and phase."""
        phase = "final" if trainer.state.fn == "validate" else "epoch"
        rows: dict[str, dict[str, Any]] = {}
        for key, value in results.items():
            _, variant, metric = key.split("/", 2)
            row = rows.setdefault(
                variant,
                {
                    "epoch": trainer.current_epoch,
                    "step": trainer.global_step,
                    "phase": phase,
                    "variant": variant,
                },
            )
            row[metric] = value
        frame = pd.DataFrame(list(rows.values()))
        if self.history_path.exists():  # a resumed run re-scores an epoch: keep the newest rows
            old = pd.read_csv(self.history_path)
            keys = ["epoch", "phase", "variant"]
            old = old[~old.set_index(keys).index.isin(frame.set_index(keys).index)]
            frame = pd.concat([old, frame], ignore_index=True)
        tmp = self.history_path.with_suffix(".csv.tmp")
        frame.to_csv(tmp, index=False)
        tmp.replace(self.history_path)

"""Figures people would rather look at than read: reliability diagrams and OOD confidence histograms.

``PlotWriter`` draws them from the evaluator's gathered outputs after every evaluation, saves PNGs
under ``<run dir>/plots/`` and sends them to the W&B logger when there is one.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from evaluation.callback import VariantEvaluator
from evaluation.suite import VAL

N_BINS = 15
CONFIDENCE_BINS = np.logspace(-3, 0, 31)  # OOD histograms: log-spaced, a sigmoid head's maxima are small


def reliability(ax: plt.Axes, confidence: Tensor, correct: Tensor, title: str) -> None:
    """Accuracy per equal-width confidence bin (bars) against the diagonal of perfect calibration."""
    edges = torch.linspace(0, 1, N_BINS + 1)
    bins = torch.bucketize(confidence.double(), edges[1:-1].double())
    count = torch.bincount(bins, minlength=N_BINS).double()
    hits = torch.bincount(bins, weights=correct.double(), minlength=N_BINS)
    accuracy = torch.where(count > 0, hits / count.clamp_min(1), torch.nan)
    centres = (edges[:-1] + edges[1:]) / 2
    ax.bar(  # NumPy arrays: matplotlib's unit conversion of tensors trips NumPy 2's __array_wrap__ deprecation
        centres.numpy(),
        accuracy.numpy(),
        width=1 / N_BINS,
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    for centre, value, n in zip(centres.tolist(), accuracy.tolist(), count.tolist(), strict=True):
        if n:  # how many images each bar rests on: a bar of 3 images says little
            ax.text(centre, min(value, 0.93) + 0.02, str(int(n)), ha="center", fontsize=6)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"{title} (n={len(correct)})", fontsize=9)


def reliability_figure(panels: dict[str, tuple[Tensor, Tensor]], suptitle: str) -> plt.Figure:
    """One reliability diagram per variant: ``{name: (confidence [N], correct [N] bool)}``."""
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, (confidence, correct)) in zip(axes.flat, panels.items(), strict=False):
        reliability(ax, confidence, correct, name)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def ood_histogram(in_conf: Tensor, out_conf: Tensor, title: str) -> plt.Figure:
    """Overlaid histograms of the head's max probability on in-distribution and OOD images."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for values, name in ((in_conf, "in-distribution val"), (out_conf, "ImageNet-O")):
        clipped = values.clamp(float(CONFIDENCE_BINS[0]), 1).tolist()  # below 1e-3: the first bin
        ax.hist(clipped, bins=CONFIDENCE_BINS, alpha=0.6, density=True, label=f"{name} (n={len(values)})")
    ax.set_xscale("log")
    ax.set(xlabel="max probability of the head (log scale)", ylabel="density", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


class PlotWriter(L.Callback):
    """After each evaluation: reliability diagrams of every single-label variant and, with
    ImageNet-O, the confidence histograms of in- vs out-of-distribution images.

    Must come after ``evaluator`` in the callback list (it reads the evaluator's outputs).
    """

    def __init__(self, evaluator: VariantEvaluator, run_dir: Path) -> None:
        self.evaluator = evaluator
        self.folder = Path(run_dir) / "plots"

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self.evaluator.last_outputs:
            return
        tag = "final" if trainer.state.fn == "validate" else f"epoch{trainer.current_epoch:03d}"
        head, suite, outputs = pl_module.head, self.evaluator.suite, self.evaluator.last_outputs
        panels: dict[str, tuple[Tensor, Tensor]] = {}
        ood: tuple[Tensor, Tensor] | None = None
        for source in suite.sources:
            out = outputs.get(source.key)
            if out is None or len(out.index) == 0:
                continue
            for variant in source.variants:
                if variant.kind in ("classification", "subset"):
                    logits = (
                        out.logits[:, suite.subsets[variant.name]] if variant.kind == "subset" else out.logits
                    )
                    panels[variant.name] = (head.confidence(logits), logits.argmax(1) == out.target)
                elif variant.kind == "ood" and VAL in outputs:
                    indices = suite.subsets[variant.name]
                    val = outputs[VAL]
                    in_logits = val.logits[torch.isin(val.target, indices)][:, indices]
                    ood = (head.confidence(in_logits), head.confidence(out.logits[:, indices]))
        figures: dict[str, plt.Figure] = {}
        if panels:
            figures["reliability"] = reliability_figure(panels, f"{head.name} head, {tag}")
        if ood is not None:
            figures["imagenet-o_confidence"] = ood_histogram(*ood, f"ImageNet-O, {head.name} head, {tag}")
        self.folder.mkdir(parents=True, exist_ok=True)
        for name, fig in figures.items():
            path = self.folder / f"{name}_{tag}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            if isinstance(trainer.logger, WandbLogger):
                trainer.logger.log_image(key=f"plots/{name}", images=[str(path)], step=trainer.global_step)
